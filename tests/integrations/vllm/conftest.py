"""vLLM integration tests: run by `make test-integrations-vllm` in the engine's own venv
(.venv-integrations/vllm), never by the default `make test` (whose venv has no vLLM).

Where vLLM is not importable these tests are not collected, unless KVSTORE_INTEGRATIONS names
vllm: then a missing vLLM is an error, not a silent skip. The server under test is a real
`kvstore serve` on 127.0.0.1, started with KVSTORE_SERVER_PYTHON (the main venv's
interpreter; the engine venv holds only the client distribution).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

WANTED = "vllm" in os.environ.get("KVSTORE_INTEGRATIONS", "").split(",")
if importlib.util.find_spec("vllm") is None:
    if WANTED:
        raise RuntimeError("KVSTORE_INTEGRATIONS=vllm but vllm is not importable in "
                           "this interpreter: run `make test-integrations-vllm`")
    collect_ignore_glob = ["test_*.py"]

from serve_helpers import Server  # noqa: E402


@pytest.fixture
def kvstore_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()
