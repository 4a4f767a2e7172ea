"""Generation alone through the runner's step loop against vLLM's `AsyncLLM` driven the way
`vllm run-batch` drives it, on the same requests with the same engine arguments.

    .venv/bin/python bench/async_engine.py [--n 1000] [--max-tokens 8] [--pairs 3]

The set: bench/scale.py's make_set (n distinct 256x192 JPEGs, one "Describe this image."
item each), model=pixtral_tiny engine=cpu, the runner's engine arguments from the same Hydra
overrides (runner.engine.engine_spec: the same kwargs and environment on both arms), with
max_num_seqs / max_num_batched_tokens 128 / 2048 as bench/pairs.py sets them. Each request is
the chat the runner's plan builds for the item (a text part, then the image as a file:// URL
under vLLM's allowed_local_media_path, which the runner keeps as is).

- step: runner.engine's VllmEngine (LLM.enqueue_chat, then LLMEngine.step) fed by the runner's
  own window (runner.job.window.run_window, limit engine.max_in_flight or 2 x max_num_seqs).
- async: AsyncLLM.from_engine_args with the same arguments; one coroutine per request, all
  created at once (as run-batch's gather over create_chat_completion): each renders its chat
  with the engine's renderer (render_chat_async, the chat parameters LLM.enqueue_chat uses),
  then iterates AsyncLLM.generate to its final output.

Timed in each arm: from the first request queued to the last output stored (in a dict); the
engine's start and stop are outside it. A warm-up pair first (not counted), then --pairs
pairs A B, each arm a fresh process. Prints medians (min-max) of each arm and of the per-pair
ratios step / async, and how many outputs are identical; appends to
bench/results/async_engine.jsonl with the load averages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
PY = sys.executable


def setup(set_file: Path, overrides: list[str]) -> tuple[dict, dict, list, dict]:
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from runner.bundled import ensure_weights
    from runner.config import register
    from runner.engine import engine_spec
    from runner.plan.images import file_url

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[*overrides, f"prompts.name={set_file}"])
    ensure_weights(cfg.model)
    kw, env = engine_spec(cfg, set_file.parent)
    reqs = []
    for line in set_file.read_text().splitlines():
        it = json.loads(line)
        content = [{"type": "text", "text": it["text"]}] + [
            {"type": "image_url", "image_url": {"url": file_url(set_file.parent / f)}}
            for f in it["images"]]
        reqs.append((it["id"], [{"role": "user", "content": content}]))
    sampling = {"temperature": cfg.sampling.temperature, "max_tokens": cfg.sampling.max_tokens}
    return kw, env, reqs, {"sampling": sampling, "max_in_flight": cfg.engine.max_in_flight,
                           "stall": cfg.engine.stall_timeout_s}


class Store:
    """The outputs, by id; the time of the last one stored."""

    def __init__(self, ids: dict[str, str]):
        self.ids, self.texts, self.last = ids, {}, 0.0

    def output(self, ev) -> None:  # noqa: ANN001 - a runner.engine.api.Finished
        self.texts[self.ids[ev.key]] = ev.samples[0].text
        self.last = time.perf_counter()

    def error(self, key: str, reason: str, kind: str) -> None:
        self.texts[self.ids[key]] = f"error: {reason}"
        self.last = time.perf_counter()

    def tokens(self, generated: int) -> None:
        pass


def arm_step(kw: dict, reqs: list, opts: dict) -> tuple[float, dict]:
    from runner.engine.vllm_engine import VllmEngine
    from runner.job.window import run_window

    eng = VllmEngine(kw)
    by_key = {f"k{i}": m for i, (_, m) in enumerate(reqs)}
    store = Store({f"k{i}": rid for i, (rid, _) in enumerate(reqs)})
    limit = opts["max_in_flight"] or 2 * eng.max_num_seqs
    t0 = time.perf_counter()
    run_window(eng, list(by_key), lambda k: (by_key[k], opts["sampling"]), store, limit,
               opts["stall"])
    gen = store.last - t0
    eng.drop()
    return gen, store.texts


def arm_async(kw: dict, reqs: list, opts: dict) -> tuple[float, dict]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.renderers import ChatParams
    from vllm.utils.mistral import is_mistral_tokenizer
    from vllm.v1.engine.async_llm import AsyncLLM

    async def main() -> tuple[float, dict]:
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))
        r = llm.renderer
        # the chat parameters of LLM.enqueue_chat (vllm/entrypoints/common/offline.py)
        chat = ChatParams(chat_template=None, chat_template_content_format="auto",
                          chat_template_kwargs={
                              "add_generation_prompt": True, "continue_final_message": False,
                              "tools": None, "tokenize": is_mistral_tokenizer(r.tokenizer)})
        tok = r.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        sp = SamplingParams(**opts["sampling"])
        texts: dict[str, str] = {}
        last = [0.0]

        async def one(i: int, rid: str, messages: list) -> None:
            _, (prompt,) = await r.render_chat_async([messages], chat, tok)
            final = None
            async for out in llm.generate(prompt, sp, f"r{i}"):
                final = out
            texts[rid] = final.outputs[0].text
            last[0] = time.perf_counter()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, rid, m) for i, (rid, m) in enumerate(reqs)))
        gen = last[0] - t0
        llm.shutdown()
        return gen, texts

    return asyncio.run(main())


def child(a: argparse.Namespace, overrides: list[str]) -> None:
    from runner.engine import environ

    kw, env, reqs, opts = setup(a.set, overrides)
    with environ(env):
        gen, texts = (arm_step if a.arm == "step" else arm_async)(kw, reqs, opts)
    a.out.write_text(json.dumps({"gen_s": gen, "texts": texts}))
    sys.stdout.flush()
    os._exit(0)  # the engines' teardown is outside the measure


def run(arm: str, f: Path, out: Path, overrides: list[str]) -> dict:
    p = subprocess.run([PY, __file__, "--arm", arm, "--set", str(f), "--out", str(out),
                        *overrides], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{arm} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=("step", "async"))
    ap.add_argument("--set", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--label", default="")
    a, overrides = ap.parse_known_args()
    if a.arm:
        return child(a, overrides)
    from scale import make_set

    tmp = Path(tempfile.mkdtemp(prefix="async-bench-"))
    f = make_set(tmp / "set", a.n, (256, 192), "jpg")
    base = ["model=pixtral_tiny", "engine=cpu", f"sampling.max_tokens={a.max_tokens}",
            "engine.max_num_seqs=128", "engine.max_num_batched_tokens=2048", *overrides]
    load = [os.getloadavg()]
    rows = []
    for i in range(a.pairs + 1):  # round 0: the warm-up
        pair = {arm: run(arm, f, tmp / f"{arm}{i}.json", base) for arm in ("step", "async")}
        same = sum(pair["step"]["texts"].get(k) == v for k, v in pair["async"]["texts"].items())
        row = {"step_s": pair["step"]["gen_s"], "async_s": pair["async"]["gen_s"],
               "n_step": len(pair["step"]["texts"]), "n_async": len(pair["async"]["texts"]),
               "errors": sum(t.startswith("error:") for p in pair.values()
                             for t in p["texts"].values()),
               "identical": same, "warmup": i == 0}
        print(json.dumps(row), flush=True)
        rows.append(row)
        load.append(os.getloadavg())
    kept = [r for r in rows if not r["warmup"]] or rows
    s, y = [r["step_s"] for r in kept], [r["async_s"] for r in kept]
    print(f"generation, step loop (s): {med(s)}")
    print(f"generation, AsyncLLM (s): {med(y)}")
    print(f"step / async: {med([p / q for p, q in zip(s, y, strict=True)])}")
    print(f"identical outputs per pair: {[r['identical'] for r in kept]} of {a.n}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    with open(ROOT / "bench/results/async_engine.jsonl", "a") as fh:
        fh.write(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "commit": commit, "label": a.label, "n": a.n,
                             "max_tokens": a.max_tokens, "overrides": base, "rows": rows,
                             "load": load}) + "\n")


if __name__ == "__main__":
    main()
