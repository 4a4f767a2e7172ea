"""The seed's way, for comparison: `LLM(...)` then one `llm.chat(all, sp)` call.

Same engine arguments and the same chat requests as the runner would build for the config
given as Hydra overrides. Prints one JSON line: start_s, generate_s, total_s, tokens.

With `--sweep T1,T2,...` (first argument) it instead measures, on one engine, the sweep points
generated one after another (what the runner does) against all points in one batch with
per-request SamplingParams: sequential_s, one_batch_s.
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()

if __name__ == "__main__":
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from runner.bundled import ensure_weights
    from runner.config import register
    from runner.engine import engine_kwargs, environ
    from runner.engine.vllm_engine import import_vllm, make_params
    from runner.plan.load import load_set
    from runner.plan.sampling import sampling_of

    temps = sys.argv[2].split(",") if sys.argv[1] == "--sweep" else None
    if temps:
        del sys.argv[1:3]
    register()
    conf = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="config", overrides=sys.argv[1:])
    plan = load_set(cfg.prompts.name, cfg.prompts.root, cfg.prompts.system, cfg.prompts.limit)
    ensure_weights(cfg.model)
    with environ(dict(cfg.engine.env)):  # set while vLLM is imported and the engine built
        vllm = import_vllm()
        t = time.perf_counter()
        llm = vllm.LLM(**engine_kwargs(cfg, plan.root))
    start = time.perf_counter() - t
    sp = make_params(sampling_of(cfg))
    if temps:
        msgs = [it.messages for it in plan.items]
        sps = []
        for tv in temps:
            cfg.sampling.temperature = float(tv)
            sps.append(make_params(sampling_of(cfg)))
        llm.chat(msgs[:2], sps[0], use_tqdm=False)  # warm-up: both modes start warm
        t = time.perf_counter()
        for one in sps:
            llm.chat(msgs, one, use_tqdm=False)
        seq = time.perf_counter() - t
        t = time.perf_counter()
        llm.chat([m for _ in sps for m in msgs], [one for one in sps for _ in msgs],
                 use_tqdm=False)
        batch = time.perf_counter() - t
        print(json.dumps({"sequential_s": seq, "one_batch_s": batch}), flush=True)
        sys.exit(0)
    t = time.perf_counter()
    outs = llm.chat([it.messages for it in plan.items], sp, use_tqdm=False)
    gen = time.perf_counter() - t
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"start_s": start, "generate_s": gen, "total_s": time.perf_counter() - T0,
                      "tokens": toks, "items": len(outs)}), flush=True)
