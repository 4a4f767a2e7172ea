"""The cost of a JSON-schema constraint: generated tokens/s with and without it, same requests,
same engine (the tiny Pixtral on CPU unless overridden).

    python bench/constraints.py [--copies 16] [--max-tokens 64] [hydra overrides ...]

The requests are the receipts set's JSON items (prompts/receipts), each repeated `--copies`
times with a distinct text suffix. One engine, started with the JSON route
(structured_outputs_config: xgrammar, disable_any_whitespace), runs in this order: a warm-up,
free (no constraint, max_tokens), schema (the set's schema, cold: grammars compiled),
schema again (warm: compiled grammars cached), free again, and free with max_tokens = the
schema outputs' mean length (the same tokens per request, so prefill weighs the same).
Prints one JSON line per pass and a summary line. A constrained random-weight model stops at
the end of the object, a free one runs to max_tokens: compare tokens/s, not wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "+engine.extra.structured_outputs_config={backend:xgrammar,disable_any_whitespace:true}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    a, overrides = ap.parse_known_args()
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from runner.bundled import ensure_weights
    from runner.config import register
    from runner.engine import engine_kwargs, environ
    from runner.engine.vllm_engine import import_vllm, make_params
    from runner.plan.load import load_set
    from runner.plan.sampling import merge

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=pixtral_tiny", "engine=cpu",
                                                       "prompts.name=receipts", ROUTE,
                                                       *overrides])
    plan = load_set(cfg.prompts.name, cfg.prompts.root, cfg.prompts.system)
    items = [it for it in plan.items if "json" in it.sampling.get("structured_outputs", {})]
    msgs = []
    for i in range(a.copies):
        for it in items:
            m = json.loads(json.dumps(it.messages))
            part = next(p for p in m[-1]["content"] if p["type"] == "text")
            part["text"] += f" (copy {i})"
            msgs.append(m)
    ensure_weights(cfg.model)
    base = {"temperature": 0.0, "max_tokens": a.max_tokens}
    free = make_params(base)
    schema = make_params(merge(base, {"structured_outputs": items[0].sampling[
        "structured_outputs"]}))
    with environ(dict(cfg.engine.env)):
        llm = import_vllm().LLM(**engine_kwargs(cfg, plan.root))
        llm.chat(msgs[:2], free, use_tqdm=False)  # warm-up
        out: dict[str, dict] = {}
        for name, sp in (("free", free), ("schema_cold", schema), ("schema_warm", schema),
                         ("free_again", free), ("free_matched", None)):
            if sp is None:  # as many tokens per request as the schema's outputs had
                per = round(out["schema_warm"]["tokens"] / out["schema_warm"]["requests"])
                sp = make_params(base | {"max_tokens": per})
            t = time.perf_counter()
            res = llm.chat(msgs, sp, use_tqdm=False)
            s = time.perf_counter() - t
            toks = sum(len(o.outputs[0].token_ids) for o in res)
            valid = None
            if sp is schema:
                import jsonschema

                so = items[0].sampling["structured_outputs"]["json"]
                valid = 0
                for o in res:
                    try:
                        jsonschema.validate(json.loads(o.outputs[0].text), so)
                        valid += 1
                    except (ValueError, jsonschema.ValidationError):
                        pass
            out[name] = {"requests": len(res), "tokens": toks, "s": round(s, 2),
                         "tokens_per_s": round(toks / s, 1), "valid": valid}
            print(json.dumps({"pass": name, **out[name]}), flush=True)
    free_tps = (out["free"]["tokens_per_s"] + out["free_again"]["tokens_per_s"]) / 2
    print(json.dumps({"free_tokens_per_s": round(free_tps, 1),
                      "schema_tokens_per_s": out["schema_warm"]["tokens_per_s"],
                      "schema_cold_tokens_per_s": out["schema_cold"]["tokens_per_s"],
                      "free_matched_tokens_per_s": out["free_matched"]["tokens_per_s"],
                      "schema_over_free": round(out["schema_warm"]["tokens_per_s"] / free_tps,
                                                3),
                      "schema_over_free_matched": round(
                          out["schema_warm"]["tokens_per_s"]
                          / out["free_matched"]["tokens_per_s"], 3)}), flush=True)


if __name__ == "__main__":
    main()
