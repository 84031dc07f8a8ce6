"""Schemathesis (its CLI, ``st run``) against ``/v1``'s own OpenAPI document on a real server on
loopback: every operation, every phase (examples, coverage, fuzzing), every check (the
default; ``--checks`` on the command line would override the per-operation config) — no 5xx,
status codes, content types and bodies as documented, schema-valid input accepted and
schema-invalid input refused, and 405s with an exact Allow header.

One documented exception, set in the config file below: a layout's ``tp_rank`` must be under
its ``tp_size``, a rule between two fields that JSON Schema cannot state, so the
"schema-valid input is accepted" check is off for ``POST /v1/namespaces`` only (the property is
described in the schema; every other check still runs there)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import LiveServer, start_server

EXAMPLES_PER_OPERATION = 30
SEED = 20261202
RUN_SECONDS_MAX = 240
CONFIG = """
[[operations]]
include-name = "POST /v1/namespaces"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("fuzz-openapi"))
    yield srv
    srv.stop()


def _st() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis (the test extra) provides the st command"
    return [exe]


def test_v1_openapi_fuzz(server: LiveServer, tmp_path: Path) -> None:
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(CONFIG)
    run = subprocess.run(
        [*_st(), "--config-file", str(cfg), "run", f"{server.url}/openapi.json",
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
         "--no-color"],
        capture_output=True, text=True, timeout=RUN_SECONDS_MAX, cwd=tmp_path)
    out = run.stdout + run.stderr
    tried = re.search(r"(\d+) generated", out)
    print(f"schemathesis: {tried.group(1) if tried else '?'} inputs generated; "
          f"exit {run.returncode}")
    assert run.returncode == 0, out[-6000:]
    assert tried and int(tried.group(1)) > 100
    assert server.state.engine.check() == []
