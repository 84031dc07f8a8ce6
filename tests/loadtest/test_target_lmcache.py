"""The ``lmcache`` replay target: its codec against LMCache's own protocol classes, and a replay
against a real ``lmcache_server`` on loopback that hits exactly what the trace allows.

Both need LMCache's venv (``make lmcache-venv``); without it they are skipped, unless
``KVSTORE_REQUIRE_LMCACHE=1`` (then they fail). The codec's own checks always run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import replay
import target_lmcache as lm
import targets
import traces
import workloads


def _server() -> str:
    exe = lm.server_exe()
    if exe is None:
        if os.environ.get("KVSTORE_REQUIRE_LMCACHE"):
            pytest.fail("KVSTORE_REQUIRE_LMCACHE=1 but no lmcache_server")
        pytest.skip("no LMCache venv (make lmcache-venv)")
    return exe


def test_lmcache_is_a_registered_target() -> None:
    assert targets.TARGETS["lmcache"] is lm.LMCacheServer


def test_make_loadtest_says_when_lmcache_is_absent(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import compare

    monkeypatch.setenv("KVSTORE_LMCACHE_SERVER", str(tmp_path / "no-such-lmcache_server"))
    names, notes = compare.choose_targets(compare.DEFAULT_TARGETS)
    assert "lmcache" not in names
    assert any(n.startswith("- lmcache: not run: no LMCache venv") for n in notes)
    exe = tmp_path / "lmcache_server"
    exe.write_text("")
    monkeypatch.setenv("KVSTORE_LMCACHE_SERVER", str(exe))
    names, notes = compare.choose_targets(compare.DEFAULT_TARGETS)
    assert "lmcache" in names and any("no capacity bound" in n for n in notes)


def test_the_codec_refuses_what_the_server_cannot_parse() -> None:
    assert len(lm.encode_request(lm.GET, lm.cache_key("00ab"))) == 186
    assert lm.cache_key("00ab") == "replay@1@0@ab@uint8"
    with pytest.raises(ValueError):
        lm.encode_request(lm.GET, "m" * 151)
    with pytest.raises(ValueError):
        lm.encode_request(lm.GET, "a b@1@0@1@uint8")  # the server strips blanks: another key
    with pytest.raises(ValueError):
        lm.encode_request(lm.PUT, lm.cache_key("1"), 2**31)
    assert lm.decode_reply(lm.SERVER_HEADER.pack(200, 7, 4, 6, 7, 0, 0, 0, 0)) == (200, 7)
    with pytest.raises(lm.ProtocolError):
        lm.decode_reply(lm.SERVER_HEADER.pack(500, 0, 1, 2, 0, 0, 0, 0, 0))
    with pytest.raises(lm.ProtocolError):
        lm.decode_reply(lm.SERVER_HEADER.pack(400, 5, 1, 2, 0, 0, 0, 0, 0))


# Run in LMCache's venv: its own classes encode the requests this module sends, and decode the
# replies this module reads (printed as JSON).
_LMCACHE_SIDE = r"""
import json, sys, torch
from lmcache.utils import parse_cache_key
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.protocol import ClientCommand as C, ClientMetaMessage as M, ServerMetaMessage as S
from lmcache.v1.protocol import ServerReturnCode as R
key = parse_cache_key(sys.argv[1])
empty = (MemoryFormat(1), torch.float16, torch.Size([0, 0, 0, 0]))
out = {
  "put": M(C.PUT, key, 4096, MemoryFormat.BINARY, torch.uint8,
           torch.Size([4096, 0, 0, 0])).serialize().hex(),
  "get": M(C.GET, key, 0, *empty).serialize().hex(),
  "exist": M(C.EXIST, key, 0, *empty).serialize().hex(),
  "health": M(C.HEALTH, key, 0, *empty).serialize().hex(),
  "ok": S(R.SUCCESS, 4096, MemoryFormat.BINARY, torch.uint8,
          torch.Size([4096, 0, 0, 0])).serialize().hex(),
  "fail": S(R.FAIL, 0, *empty).serialize().hex(),
  "key": key.to_string(),
}
print(json.dumps(out))
"""


def test_the_codec_is_lmcaches_own_byte_for_byte() -> None:
    python = Path(_server()).parent / "python"
    key = lm.cache_key(replay.key_of(0xBEEF))
    done = subprocess.run([str(python), "-c", _LMCACHE_SIDE, key], capture_output=True,
                          text=True, timeout=120, check=True,
                          env={**os.environ, "LMCACHE_TRACK_USAGE": "false"})
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs["key"] == key  # LMCache's key string round-trips unchanged
    assert bytes.fromhex(theirs["put"]) == lm.encode_request(lm.PUT, key, 4096)
    assert bytes.fromhex(theirs["get"]) == lm.encode_request(lm.GET, key)
    assert bytes.fromhex(theirs["exist"]) == lm.encode_request(lm.EXIST, key)
    assert bytes.fromhex(theirs["health"]) == lm.encode_request(lm.HEALTH, key)
    assert lm.decode_reply(bytes.fromhex(theirs["ok"])) == (lm.SUCCESS, 4096)
    assert lm.decode_reply(bytes.fromhex(theirs["fail"])) == (lm.FAIL, 0)


def test_lmcache_server_hits_what_the_trace_allows(tmp_path: Path) -> None:
    _server()
    reqs = workloads.agentic(workloads.AgenticSpec(sessions=10, turns=3, seed=11))
    p = tmp_path / "agentic.jsonl"
    traces.write(p, reqs)
    out = tmp_path / "summary.json"
    rc = replay.main(["--trace", str(p), "--target", "lmcache", "--block-bytes", "4KiB",
                      "--concurrency", "1", "--as-fast-as-possible", "--json", str(out),
                      "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())
    offline = traces.offline_hits(traces.read(p))
    assert s["requests"] == offline.requests
    assert s["blocks_hit"] == offline.blocks_hit  # one request at a time, nothing evicted
    assert s["hit_ratio"] == offline.hit_ratio
    assert s["wrong_bytes"] == 0 and s["lost_hits"] == 0


def test_a_block_written_under_concurrency_is_read_back_whole() -> None:
    """Four connections at once, blocks of 1 MiB: every PUT is stored before put_many returns
    (the HEALTH barrier), and every byte comes back."""
    _server()
    from concurrent.futures import ThreadPoolExecutor

    t = lm.LMCacheServer("1GiB", 4)
    try:
        def one(i: int) -> bool:
            keys = [replay.key_of(i * 100 + j) for j in range(6)]
            vals = [replay.block_value(i * 100 + j, 2**20) for j in range(6)]
            t.put_many(keys, vals)
            return t.lookup(keys) == 6 and t.get_many(keys) == vals

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(one, range(8)))
        assert t.lookup([replay.key_of(999_999)]) == 0
        assert t.get_many([replay.key_of(999_999)]) == [None]
    finally:
        t.close()
