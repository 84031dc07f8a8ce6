"""One vLLM run in its own process: the tiny model, the kvstore connector loaded through
``kv_connector_module_path``, prompts given as token ids in waves (one ``generate`` call per
wave, so a later wave can hit vLLM's local prefix cache); writes the outputs as JSON.

    python run_llm.py MODEL_DIR KV_TRANSFER_CONFIG_JSON PROMPTS_JSON OUT_JSON
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    model, config_path, prompts_path, out_path = sys.argv[1:5]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    waves = json.loads(open(prompts_path).read())
    llm = LLM(
        model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
        max_model_len=256, max_num_seqs=4, block_size=32, seed=0, disable_log_stats=False,
        kv_transfer_config=json.loads(open(config_path).read()))
    params = SamplingParams(temperature=0.0, max_tokens=8, detokenize=False)
    outs = []
    for wave in waves:
        outs += llm.generate([TokensPrompt(prompt_token_ids=p) for p in wave], params)
    metrics = {}
    for m in llm.get_metrics():
        if "prefix_cache" in m.name or "connector" in m.name:
            metrics[m.name] = getattr(m, "value", None)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "num_cached_tokens": [o.num_cached_tokens for o in outs],
        "metrics": metrics,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
