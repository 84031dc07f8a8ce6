"""README.md states what the code does: its HTTP paths, serve flags and the object size limit."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kvstore import limits
from kvstore.__main__ import build_parser
from kvstore.api import control
from kvstore.api.app import CONTROL_PATHS
from kvstore.config import add_serve_arguments

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_health_paths_are_the_served_ones() -> None:
    paths = set(re.findall(r"`(/[a-z0-9_./{}-]*)`", README))
    assert {"/healthz", "/readyz", "/metrics", "/docs"} <= paths
    # the /v1 routes as the control plane declares them (`@app.get("/v1/stats", ...)`)
    v1_routes = set(re.findall(r'@app\.[a-z]+\(\s*"(/v1/[^"]*)"', Path(control.__file__).read_text()))
    assert "/v1/stats" in v1_routes
    for path in paths - {"/v1", "/"}:
        served = path in CONTROL_PATHS or path in v1_routes
        assert served, f"README names {path}, which the server does not serve"
    # health and readiness are not under /v1, whatever a sentence near it says
    assert not re.search(r"`/v1`[^.\n]*\bhealth", README), "README puts health under /v1"


def test_object_size_limit_is_stated_as_in_limits() -> None:
    stated = {int(n) for n in re.findall(r"object holds at\s+most (\d+) MiB", README)}
    assert stated == {limits.block_bytes_max // limits.MiB}, stated
    assert limits.http_body_bytes_max == limits.block_bytes_max


def _flags(p: argparse.ArgumentParser) -> set[str]:
    """Every option of ``p`` and of its subcommands, recursively."""
    out: set[str] = set()
    for action in p._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _flags(sub)
    return out


def test_every_serve_flag_in_readme_exists() -> None:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    # and the operator commands' (kvstore namespace set-owner)
    known = _flags(p) | _flags(build_parser())
    # flags in the Benchmarks section belong to the scripts under loadtest/, not the server
    served_text = re.sub(r"\n## Benchmarks\n.*?(?=\n## )", "\n", README, flags=re.S)
    for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", served_text)):
        assert flag in known, f"README mentions {flag}, which no `kvstore` command takes"
