"""The differential cache suite: for each mutation of a table, a run on warm caches (the store
that planned the config before the mutation) must plan exactly what a cold run (a fresh store)
plans for the mutated config: ids, keys, item errors and their kinds, token counts, and what
would be sent to the engine. A cache hit is only ever a shortcut (issue 31).

No engine: the plan, the real mistral-common tokenizer and the job's own calls (load_plan,
plan_tokens, remember), in the order the job makes them. A new config field must be given a
verdict in VERDICTS (in the table, or why the plan does not read it).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hostile as h
import pytest

from conftest import ROOT, TINY, make_cfg
from runner import config as config_mod
from runner.bundled import mistral_common_file
from runner.errors import UserError
from runner.plan import cache as plancache
from runner.plan import load as plan_mod
from runner.plan import statcache
from runner.plan.load import check_errors, load_plan
from runner.plan.tokens import plan_tokens

LONG = "word " * 300  # ~300 tokens: too long under max_model_len=200, fine under 4096


@dataclasses.dataclass
class World:
    d: Path  # the set's folder
    url: str  # the local HTTP server's folder URL
    served: Path  # what it serves
    tok: Path  # a model folder with a tekken.json (exact token counts)
    bare: Path  # a model folder without one (estimate)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Model folders with and without a tekken.json, shared: the tokenizer loads once."""
    top = tmp_path_factory.mktemp("models")
    tok, bare = top / "model", top / "bare"
    tok.mkdir()
    bare.mkdir()
    shutil.copy(mistral_common_file(), tok / "tekken.json")
    return tok, bare


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          models: tuple[Path, Path]) -> Iterator[World]:
    monkeypatch.setattr(plancache, "RACY_NS", 0)  # every input old enough at once
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Quiet, directory=str(served))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)  # quick stop
    thread.start()
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    h.png(d / "img" / "a.png")
    h.png(d / "img" / "big.png", (1500, 1500))  # 2.25 megapixels
    h.cmyk_jpeg(d / "img" / "c.jpg")
    h.png(d / "img" / "wide.png", (300, 100))
    h.truncated_png(d / "img" / "cut.png")  # a plan-stage item error: the plan cache keeps it
    (d / "schema.json").write_text('{"type": "object"}')
    url = f"http://127.0.0.1:{srv.server_address[1]}/r.png"
    h.write_set(d, [
        {"id": "a", "text": "What is this?", "images": ["img/a.png"]},
        {"id": "big", "text": "And this?", "images": ["img/big.png"]},
        {"id": "c", "text": "Converted", "images": ["img/c.jpg"]},
        {"id": "wide", "text": "Wide", "images": ["img/wide.png"]},
        {"id": "long", "text": LONG, "images": ["img/a.png"]},
        {"id": "long2", "text": LONG + LONG},
        {"id": "two", "text": "Compare", "images": ["img/a.png", "img/wide.png"]},
        {"id": "json", "text": "As JSON", "sampling": {"structured_outputs":
                                                        {"json": "schema.json"}}},
        {"id": "remote", "text": "Remote", "images": [url]},
        {"id": "cut", "text": "Truncated", "images": ["img/cut.png"]},
    ])
    h.write_set(d / "other", [{"id": "o", "text": "Another set", "images": []}])
    # the same relative name under another root (the prompts.root row): another set
    h.write_set(d / "alt" / "other", [{"id": "o2", "text": "Another root", "images": []}])
    tok, bare = models
    h.png(served / "r.png", (40, 40))
    try:
        yield World(d, url, served, tok, bare)
    finally:
        srv.shutdown()
        srv.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass


def observe(w: World, store: Path, overrides: list[str]) -> Any:
    """What a run plans for this config: the job's calls, in the job's order."""
    cfg = make_cfg(*TINY, f"prompts.name={w.d / 'set.yaml'}", f"store.root={store}",
                   "prompts.allow_remote=true", f"model.path={w.tok}",
                   "model.max_model_len=4096", *overrides)
    try:
        plan = load_plan(cfg, show=False)
        toks = plan_tokens(cfg, plan)
        check_errors(plan.items, cfg.prompts.on_item_error)  # as the job's check
    except UserError as e:
        return ("user error", str(e))
    seen = {
        "plan": [(it.id, it.key, it.error, it.error_kind) for it in plan.items],
        "tokens": [(t.id, t.images, t.image_tokens, t.prompt_tokens, t.exact, t.error)
                   for t in toks],
        "sent": [(it.key, _sent(it, store), it.sampling) for it in plan.items
                 if not it.error],
    }
    plan.remember()  # what the job does once the run goes ahead
    return seen


def _sent(it: Any, store: Path) -> list[Any]:
    """The messages and image facts the engine would get, the store's own path blanked."""
    ims = [(im.sha256, im.width, im.height, im.norm,
            str(im.file).replace(str(store), "<store>")) for im in it.images]
    msgs = repr(it.messages).replace(str(store), "<store>")
    return [msgs, ims]


Action = Callable[[World], None]


def _flip(name: str) -> Action:
    return lambda w: h.flip_a_byte_keep_mtime(w.d / "img" / name)


def _resize(w: World) -> None:
    h.png(w.d / "img" / "a.png", (80, 60))


def _touch(w: World) -> None:
    f = w.d / "img" / "a.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _replace(w: World) -> None:
    tmp = w.d / "img" / "new.png"
    h.png(tmp, (64, 48), color=(10, 200, 10))  # same size, other pixels, another inode
    os.replace(tmp, w.d / "img" / "a.png")


def _edit_set(w: World) -> None:
    f = w.d / "set.yaml"
    f.write_text(f.read_text().replace("What is this?", "What is that?"))


def _edit_schema(w: World) -> None:
    (w.d / "schema.json").write_text('{"type": "object", "required": ["x"]}')


def _remote_fails(w: World) -> None:
    os.replace(w.served / "r.png", w.served / "gone.png")


def _remote_back(w: World) -> None:
    os.replace(w.served / "gone.png", w.served / "r.png")


# name -> (overrides before, overrides after, what changes on disk before the base run, and
# between the two runs). {tok} and {bare}: the model folders with and without a tekken.json.
MUTATIONS: dict[str, tuple[list[str], list[str], Action | None, Action | None]] = {
    "prompts.name": ([], ["prompts.name={d}/other/set.yaml"], None, None),
    "prompts.root": (["prompts.name=other", "prompts.root={d}"],
                     ["prompts.name=other", "prompts.root={d}/alt"], None, None),
    "prompts.system": ([], ["prompts.system=Be brief."], None, None),
    "prompts.limit-lowered": ([], ["prompts.limit=3"], None, None),
    "prompts.limit-raised": (["prompts.limit=3"], [], None, None),
    "prompts.allow_remote": ([], ["prompts.allow_remote=false"], None, None),
    "prompts.max_image_pixels-lowered": (["prompts.max_image_pixels=5000000"],
                                         ["prompts.max_image_pixels=2000000"], None, None),
    "prompts.max_image_pixels-raised": (["prompts.max_image_pixels=1000000"],
                                        ["prompts.max_image_pixels=5000000"], None, None),
    "prompts.max_image_size-lowered": ([], ["prompts.max_image_size=32"], None, None),
    "prompts.max_image_size-raised": (["prompts.max_image_size=32"],
                                      ["prompts.max_image_size=200"], None, None),
    "prompts.on_item_error": ([], ["prompts.on_item_error=fail"], None, None),
    "model.max_model_len-raised": (["model.max_model_len=200"], [], None, None),
    "model.max_model_len-lowered": ([], ["model.max_model_len=200"], None, None),
    "model.tokenizer": ([], ["model.tokenizer={bare}"], None, None),
    "model.tokenizer_mode": ([], ["model.tokenizer_mode=auto"], None, None),
    "model.path": ([], ["model.path={bare}"], None, None),
    "model.limit_mm_per_prompt-lowered": ([], ["model.limit_mm_per_prompt.image=1"],
                                          None, None),
    "model.limit_mm_per_prompt-raised": (["model.limit_mm_per_prompt.image=1"], [],
                                         None, None),
    "image-bytes": ([], [], None, _flip("a.png")),
    "image-size": ([], [], None, _resize),
    "image-mtime": ([], [], None, _touch),
    "image-replaced": ([], [], None, _replace),
    "set-file": ([], [], None, _edit_set),
    "schema-file": ([], [], None, _edit_schema),
    "remote-fails-then-succeeds": ([], [], _remote_fails, _remote_back),
}


# Rows whose mutation is meant to leave the plan as it was: the caches must notice the change
# and still plan the same. Every other row must change what the base run planned, or it tests
# nothing (a row that plans the same before and after is passed by any cache).
SAME_PLAN: dict[str, str] = {
    "image-mtime": "a touched image has the same bytes: the caches re-check it, the plan stays",
}


def _fill(w: World, o: list[str]) -> list[str]:
    return [x.format(d=w.d, tok=w.tok, bare=w.bare) for x in o]


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_warm_run_plans_what_a_cold_run_plans(name: str, world: World, tmp_path: Path):
    before, after, setup, change = MUTATIONS[name]
    if setup is not None:
        setup(world)
    warm_store = tmp_path / "warm"
    base = observe(world, warm_store, _fill(world, before))
    if change is not None:
        change(world)
    warm = observe(world, warm_store, _fill(world, after))
    cold = observe(world, tmp_path / "cold", _fill(world, after))
    assert warm == cold
    if name in SAME_PLAN:
        assert warm == base, f"{name} is listed as changing nothing ({SAME_PLAN[name]})"
    else:
        assert warm != base, f"the row {name} plans what the base run planned: it tests nothing"


def test_a_new_code_version_plans_again(world: World, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch):
    """The code that plans is in the caches' keys: a plan module that computes keys another
    way (stood in for by a salted item_key and the digest of the changed code) plans anew."""
    warm_store = tmp_path / "warm"
    observe(world, warm_store, [])
    real_key, real_digest = plan_mod.item_key, plancache.code_digest
    monkeypatch.setattr(plan_mod, "item_key", lambda *a: "v2" + real_key(*a))
    monkeypatch.setattr(plancache, "code_digest", lambda: real_digest() + "v2")
    warm = observe(world, warm_store, [])
    assert warm == observe(world, tmp_path / "cold", [])
    assert all(k.startswith("v2") for _, k, err, _ in warm["plan"] if not err)


def test_the_code_digest_covers_every_plan_module(tmp_path: Path):
    """An edit to any module of the plan stage changes code_digest (run on a copy of the
    package, one module edited at a time), and undoing it gives the digest back."""
    import pkgutil

    import runner.plan

    modules = sorted(f"{m.name}.py" for m in pkgutil.iter_modules(runner.plan.__path__))
    assert {"load.py", "images.py", "sources.py", "sampling.py", "tokens.py",
            "cache.py", "statcache.py"} <= set(modules)
    copy = tmp_path / "plan"
    shutil.copytree(Path(plancache.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))

    def digest() -> str:
        plancache.code_digest.cache_clear()  # computed once per process
        return plancache.code_digest()

    with pytest.MonkeyPatch.context() as m:
        m.setattr(plancache, "__file__", str(copy / "cache.py"))  # where code_digest looks
        base = digest()
        for name in modules:
            f = copy / name
            text = f.read_bytes()
            f.write_bytes(text + b"# another version\n")
            assert digest() != base, f"an edit to runner/plan/{name} keeps the digest"
            f.write_bytes(text)
        assert digest() == base
    plancache.code_digest.cache_clear()


# Every config field: "table" (mutated above) or why the plan and its caches do not read it.
RUNTIME_ONLY = "not read by the plan: the job or the engine reads it each run"
VERDICTS: dict[str, str] = {
    **{f"model.{k}": "table" for k in ("path", "tokenizer", "tokenizer_mode",
                                        "max_model_len", "limit_mm_per_prompt")},
    "model.name": "not read by the plan: a label (the run hash has it)",
    "model.hf_repo": "not read by the plan: told when the path is missing",
    "model.quantized_from": "not read by the plan: the card's recovery % pairs on it",
    "model.build": "not read by the plan: builds the model folder before the plan",
    "model.api": "not read by the plan's counts: a hosted model's endpoint (the token plan "
                 "of such a model is an estimate, its label says so)",
    "model.mm_processor_kwargs": "not read by the plan cache: the token plan, counted again "
                                 "each run, reads it where the model's processor counts "
                                 "(runner/plan/hf_tokens.py)",
    **{f"model.{k}": "not read by the plan: the engine's loading knob" for k in (
        "config_format", "load_format", "quantization", "revision", "trust_remote_code",
        "tensor_parallel_size")},
    **{f"prompts.{k}": "table" for k in ("name", "root", "system", "limit", "allow_remote",
                                          "max_image_pixels", "max_image_size",
                                          "on_item_error")},
    "prompts.max_error_rate": "not read by the plan: the job's check_plan, each run",
    **{f"prompts.{k}": "not read by the plan: a preset's import, before the plan, re-imports "
       "when its source or limit changes (runner/benchmarks/preset.py); the plan then reads "
       "the imported set like any set" for k in ("benchmark", "source", "subset",
                                                  "subset_seed")},
    "dry_run_requests": "not read by the plan: where a dry run writes what it would send",
    "store.root": "the caches live in it: a fresh store is the cold run",
    **{f"store.{k}": RUNTIME_ONLY for k in ("wait", "fsync_every", "fsync_seconds",
                                             "thumbnails")},
    "shard.index": "not read by the plan cache: the shard filter is applied after, each run",
    "shard.count": "not read by the plan cache: the shard filter is applied after, each run",
    "dry_run": RUNTIME_ONLY,
    "retry_errors": RUNTIME_ONLY,
    "judge": "not read by the plan: judges the stored outputs after generation",
}
GROUPS_NOT_READ = {
    "engine": "the engine's arguments: never read by the plan",
    "sampling": "the run's sampling: applied by the job per request, never stored in a plan",
    "log": "where logs go",
}


def test_every_config_field_has_a_verdict():
    fields: set[str] = set()
    for top in dataclasses.fields(config_mod.RunConfig):
        t = top.default_factory() if top.default_factory is not dataclasses.MISSING else None
        if t is not None and dataclasses.is_dataclass(t):
            if top.name in GROUPS_NOT_READ:
                continue
            fields |= {f"{top.name}.{f.name}" for f in dataclasses.fields(t)}
        else:
            fields.add(top.name)
    assert fields == set(VERDICTS), (
        "a config field without a verdict: add it to MUTATIONS (and 'table') or say why the "
        f"plan does not read it: {sorted(fields ^ set(VERDICTS))}")
    tabled = {k for k, v in VERDICTS.items() if v == "table"}
    named = {m.split("-")[0] for m in MUTATIONS}
    assert tabled <= named


def test_the_plan_reads_no_engine_or_log_field():
    """GROUPS_NOT_READ holds for engine and log: no plan module names them."""
    src = "".join(f.read_text() for f in Path(plancache.__file__).parent.glob("*.py"))
    assert "cfg.engine" not in src and "cfg.log" not in src


@pytest.mark.process
def test_a_stale_entry_sends_every_item_and_retry_errors_repairs_an_old_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_engine: None):
    """Issue 31, hole 1, as the job sees it: an entry that carries a too_long error (as the
    old code wrote them) is never believed, so every fitting item reaches the engine; and a run
    that stored such an error (the old code: token errors never cleared) is repaired by
    retry_errors=true."""
    import json

    from runner.job.recipe import Job
    from runner.plan import tokens
    from runner.store.record import read_records

    monkeypatch.setattr(plancache, "RACY_NS", 0)
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    h.png(d / "img" / "a.png")
    s = h.write_set(d, [{"id": "a", "text": "x", "images": ["img/a.png"]},
                        {"id": "b", "text": "y"}])
    base = [*TINY, f"prompts.name={s}", f"store.root={tmp_path / 'store'}",
            "sampling.max_tokens=2"]
    Job(make_cfg(*base, "prompts.limit=2"), []).run()  # plans and keeps the entry
    (entry,) = (tmp_path / "store" / ".cache" / "plans").iterdir()
    head, *rest = entry.read_text().splitlines()
    doc = json.loads(head)
    doc["errors"] = {"0": ["prompt has 9999 tokens, over model.max_model_len=200", "too_long"]}
    entry.write_text("\n".join([json.dumps(doc), *rest]) + "\n")
    monkeypatch.setattr(tokens, "TOKEN_KINDS", ())  # the old code: an error never cleared
    old = Job(make_cfg(*base, "prompts.limit=2", "sampling.seed=1"), []).run()
    records = read_records(Path(old.folder))
    assert sorted(r.get("error_kind") or "" for r in records.values()) == ["", "too_long"]
    monkeypatch.setattr(tokens, "TOKEN_KINDS", ("too_long", "request"))
    fixed = Job(make_cfg(*base, "prompts.limit=2", "sampling.seed=1", "retry_errors=true"),
                []).run()
    records = read_records(Path(fixed.folder))
    assert fixed.folder == old.folder
    assert all(not r.get("error") for r in records.values()) and len(records) == 2
    fresh = Job(make_cfg(*base, "prompts.limit=2", "sampling.seed=2"), []).run()
    assert fresh.errors == 0 and fresh.computed == 2  # the planted entry is not believed


# ---- views: what a run reports (issue 39) ----------------------------------------------------
# For every field that changes which items a config plans: in a store that also holds another
# config's items (the base row's), the mutated config reports exactly what a cold run of it
# reports in a fresh store: metrics.json, its card row, its view. Jobs on the fake engine.


def _reported(store: Path, s: Any) -> dict[str, Any]:
    from runner.results.card.card import card
    from runner.results.runs.load import load_run

    m = json.loads((store / s.hash / "metrics.json").read_text())
    m.pop("completion_tokens_per_s", None)  # the last invocation's speed
    (row,) = card([load_run(store / s.hash)])["rows"]
    return {"view": s.view, "metrics": m,
            "card": {k: row[k] for k in ("value", "ci95", "n", "errors", "subset")}}


def _sets(top: Path) -> Path:
    """The sample set under two roots: the same relative name, other texts (prompts.root)."""
    shutil.copytree(ROOT / "prompts" / "sample", top / "a" / "sample")
    shutil.copytree(ROOT / "prompts" / "sample", top / "b" / "sample")
    f = top / "b" / "sample" / "set.yaml"
    f.write_text(f.read_text().replace("What", "Which", 1))
    return top


VIEW_MUTATIONS: dict[str, tuple[list[str], list[str]]] = {
    "prompts.limit-lowered": ([], ["prompts.limit=2"]),
    "prompts.limit-raised": (["prompts.limit=2"], ["prompts.limit=4"]),
    "prompts.max_image_size": ([], ["prompts.max_image_size=64"]),
    "prompts.system": ([], ["prompts.system=Answer in one word."]),
    "prompts.root": ([], ["prompts.root={top}/b"]),
    "prompts.name": ([], ["prompts.name=sample/conversations"]),
    "prompts.source": (["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl"],
                       ["prompts=mm_mt_bench", "prompts.source={top}/b.jsonl"]),
    "prompts.benchmark": (["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl"],
                          ["prompts.root={top}/a", "prompts.name=sample"]),
    "prompts.subset": (["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl"],
                       ["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl",
                        "prompts.subset.mm_mt_bench=1"]),
    "prompts.subset_seed": (["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl",
                             "prompts.subset.mm_mt_bench=1"],
                            ["prompts=mm_mt_bench", "prompts.source={top}/a.jsonl",
                             "prompts.subset.mm_mt_bench=1", "prompts.subset_seed=2"]),
}


@pytest.mark.process  # jobs on the fake engine (a child process each): the full lane
@pytest.mark.parametrize("name", list(VIEW_MUTATIONS))
def test_view_diff(name: str, tmp_path: Path, fake_engine: None):
    from test_views import mt_source

    from runner.job.recipe import Job

    top = _sets(tmp_path / "sets")
    mt_source(top / "a.jsonl", "What is shown?")
    mt_source(top / "b.jsonl", "Which colour is it?")
    base, mutated = ([o.format(top=top) for o in x] for x in VIEW_MUTATIONS[name])
    # max_tokens from the command line (over the protocol's 4096): the fake engine is quick
    common = [*TINY, f"prompts.root={top}/a", "model.limit_mm_per_prompt.image=7",
              "sampling.max_tokens=8"]

    def run(store: Path, over: list[str]) -> Any:
        args = [*common, f"store.root={store}", *over]
        return Job(make_cfg(*args), args).run()

    b = run(tmp_path / "warm", base)
    warm = run(tmp_path / "warm", mutated)
    cold = run(tmp_path / "cold", mutated)
    assert warm.view != b.view, f"the row {name} plans the base's items: it tests nothing"
    assert _reported(tmp_path / "warm", warm) == _reported(tmp_path / "cold", cold)


@pytest.mark.process
def test_shards_share_the_whole_configs_view(tmp_path: Path, fake_engine: None):
    """A shard's view is its config's whole plan (every shard's items), so shards and the
    unsharded run report one view; a shard's figures name the items not stored yet."""
    from runner.job.recipe import Job

    def run(*over: str) -> Any:
        args = [*TINY, f"store.root={tmp_path}", *over]
        return Job(make_cfg(*args), args).run()

    s0 = run("shard.count=2", "shard.index=0")
    m = json.loads((tmp_path / s0.hash / "metrics.json").read_text())
    assert m["view"]["planned"] == 5 and m["view"]["missing"] == 5 - s0.planned
    s1 = run("shard.count=2", "shard.index=1")
    whole = run()
    assert s0.view == s1.view == whole.view and (s0.planned + s1.planned, whole.computed) == (5, 0)


# Which fields change the items a config plans (its view): "table" (VIEW_MUTATIONS above), or
# why not.
SAME_ITEMS = "the same items (keys); what changes is each item's record, not which items"
VIEW_VERDICTS: dict[str, str] = {
    **{f"prompts.{k}": "table" for k in ("limit", "max_image_size", "system", "root", "name",
                                          "source", "benchmark", "subset", "subset_seed")},
    "prompts.allow_remote": SAME_ITEMS,
    "prompts.max_image_pixels": SAME_ITEMS,
    "prompts.on_item_error": "fails the run or not; the items are the same",
    "prompts.max_error_rate": "stops a run or not; the items are the same",
    "shard.index": "the view is every shard's items: test_shards_share_the_whole_configs_view",
    "shard.count": "the view is every shard's items: test_shards_share_the_whole_configs_view",
}


def test_every_prompts_and_shard_field_has_a_view_verdict():
    fields = {f"{g}.{f.name}" for g, cls in (("prompts", config_mod.PromptsConfig),
                                              ("shard", config_mod.ShardConfig))
              for f in dataclasses.fields(cls)}
    assert fields == set(VIEW_VERDICTS), sorted(fields ^ set(VIEW_VERDICTS))
    tabled = {k.split("-")[0] for k in VIEW_MUTATIONS}
    assert tabled == {k for k, v in VIEW_VERDICTS.items() if v == "table"}
