# kvstore: two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-engine bench-http bench-bulk bench-pod bench-resp clean test-nixl test-client-dist compose-test

# `pip install -e .` installs the client distribution (clients/, kvstore-client) as a
# dependency; the second line makes it editable too, so edits under clients/ apply at once.
$(STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps -e ./clients
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kvstore serve --host 127.0.0.1 --data-dir ./data

test: $(STAMP)
	$(PY) -m ruff check kvstore clients tests loadtest
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The optional NIXL extra: the CPU torch build first (plain torch would pull a CUDA build), then
# nixl-cu12; runs only the NIXL tests (CPU-only over UCX, UCX_TLS defaults to sm,tcp,self).
test-nixl: $(STAMP)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q nixl-cu12==1.5.1
	$(PY) -m pytest -q -p no:cacheprovider tests/transport/test_nixl.py tests/clients/test_client_torch.py tests/test_auth_matrix.py

# The client distribution on its own: fresh venvs under a temporary directory, `pip install
# ./clients` (nothing of the server in `pip list`) and `pip install -e '.[test]'` from a clean
# clone, then the README's client example against a real server on loopback (about a minute).
test-client-dist: $(STAMP)
	KVSTORE_TEST_CLIENT_DIST=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_client_dist.py

# The real docker-compose.yml (etcd, three nodes, a load generator) under podman-compose, checked
# end to end and always taken down; as root (it apt-installs podman, podman-compose, runc and
# mmdebstrap if missing and builds the base image from Debian packages). About a minute warm.
compose-test:
	sh deploy/compose-test.sh

lint: $(STAMP)
	$(PY) -m ruff check kvstore clients tests loadtest
	$(PY) -m mypy

bench: bench-engine bench-http bench-bulk bench-pod bench-resp

bench-engine: $(STAMP)
	$(PY) loadtest/bench_engine.py

bench-http: $(STAMP)
	$(PY) loadtest/bench_http.py

bench-bulk: $(STAMP)
	$(PY) loadtest/bench_bulk.py

bench-pod: $(STAMP)
	$(PY) loadtest/bench_pod.py

bench-resp: $(STAMP)
	$(PY) loadtest/bench_resp.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
