"""Every command, config key, link, section reference and file path in README.md and docs/*.md
is checked here, without listing any by hand: a new page or command is covered as it lands.

A fenced block without a language is shell. The HTML comment on the line before the fence says
how its lines are checked (docs/development.md, "Commands in the docs"):
- no marker: each line is run as written (a dry run, `--cfg job`, `--help`, or a results
  command against a fixture store), in this process;
- `<!-- docs: needs gpu -->` (a GPU or downloaded weights), or `<!-- docs: needs engine -->`
  (a real engine on CPU, minutes here), checked alike: each
  `python -m runner` line is composed as `--cfg job` would (every point of a sweep), with a
  bundled model in place of a GPU one, each `python -m MODULE` must exist, each `make TARGET`
  must be a target, and any other tool must be a known one (hf, pip, modelscope, ...);
- `<!-- docs: illustration -->`: shown, not run (output, a layout, a syntax summary).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import fakes
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONF = ROOT / "conf"
MARK = re.compile(r"<!--\s*docs:\s*(needs gpu|needs engine|illustration)\s*-->")
FENCE = re.compile(r"^[ \t]*```(\S*)\n(.*?)^[ \t]*```", re.S | re.M)
TOOLS = {"hf", "pip", "modelscope", "python3", "nvidia-smi", "export", "cd", "git", "source",
         "uv", "flock", "ray", "kubectl", "vllm"}
GPU_MODELS = {"pixtral_12b": "pixtral_tiny", "pixtral_large_w4a16": "pixtral_large_w4a16_tiny",
              "pixtral_large": "pixtral_large_tiny"}
GROUPS = ("model", "engine", "sampling", "prompts", "store", "shard", "log", "judge")
FILE_EXT = ("py", "md", "json", "jsonl", "yaml", "yml", "html", "txt", "log", "sqlite", "csv",
            "toml", "sh", "lock", "png")
TOP = ("runner/", "conf/", "docs/", "tests/", "scripts/", "bench/", "prompts/",
       "requirements/", "hydra_plugins/", "schemas/")


@dataclass
class Command:
    page: Path
    line: int
    text: str
    mark: str  # "run", "needs gpu"

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.text}"


@dataclass
class Counts:
    run: int = 0
    composed: int = 0
    illustrations: int = 0
    inline: int = 0
    keys: set[str] = field(default_factory=set)
    links: int = 0
    sections: int = 0
    paths: set[str] = field(default_factory=set)


def lineno(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def commands() -> tuple[list[Command], int]:
    """Every shell line of every page (continuations joined, comments dropped)."""
    out, illustrations = [], 0
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1):  # yaml, json, text: not shell
                continue
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = MARK.search(before)
            if mark and mark.group(1) == "illustration":
                illustrations += 1
                continue
            start = lineno(text, m.start()) + 1
            buf, first = "", start
            for i, raw in enumerate(m.group(2).splitlines()):
                if not buf:
                    first = start + i
                buf += raw
                if raw.rstrip().endswith("\\"):
                    buf = buf.rstrip()[:-1] + " "
                    continue
                try:
                    words = shlex.join(shlex.split(buf, comments=True))
                except ValueError:  # not shell: listed as a failing command
                    words = buf
                if words:
                    kind = mark.group(1).replace("engine", "gpu") if mark else "run"
                    out.append(Command(page, first, words, kind))
                buf = ""
    return out, illustrations


def headings(page: Path) -> set[str]:
    return {h.strip().lower() for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


def slug(h: str) -> str:
    return re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")


# ---- the fixture store the results commands read -----------------------------------------

RUNS = {"84892ccf5a8fd8fa": ("model=pixtral_tiny", "engine=cpu"),
        "d9d8a1b2c3d4e5f6": ("model=pixtral_tiny", "engine=cpu", "sampling.temperature=0.7")}


def fixture_store(root: Path) -> None:
    for name, overrides in RUNS.items():
        cfg = composed(tuple(overrides))
        recs = [fakes.record("chart", "Q3", expected="Q3", tags=["chart"]),
                fakes.record("receipt", "4.30", expected="4.30", tags=["document"]),
                fakes.record("table", "x", expected="y", tags=["table"])]
        fakes.write_run(root, name, recs, config=cfg, overrides=list(overrides),
                        model=cfg.model.name)
    run_results(["--root", str(root), "score", *RUNS])  # scored, as a finished job leaves it


# ---- running and composing ---------------------------------------------------------------


def composed(overrides: tuple[str, ...], name: str = "config") -> DictConfig:
    """Hydra's composition of `overrides`. Group choices, `+`/`~` and hydra's own keys go to
    Hydra (one composition per distinct set of them); plain `a.b=value` overrides are then set
    as Hydra sets them: the value parsed by Hydra's grammar, the key and its type checked by
    the typed schema (struct mode). A composition costs ~0.2 s; most commands differ only in
    plain values."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    plain = [o for o in parsed if not o.is_add() and not o.is_delete() and not o.is_force_add()
             and "." in o.key_or_group and not o.key_or_group.startswith("hydra")
             and "/" not in o.key_or_group]
    rest = tuple(o.input_line for o in parsed if o not in plain)
    cfg = copy.deepcopy(_composed(rest, name))  # a job may not change the cached one
    for o in plain:
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


@functools.cache
def _composed(overrides: tuple[str, ...], name: str = "config") -> DictConfig:
    """One composition per distinct override list, inside one Hydra initialization (its
    config repository caches the YAML files: ~10x faster than a fresh one per call)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def compose_points(args: list[str], substitute: bool) -> list:
    """The configs `python -m runner ARGS --cfg job` would print (each point of a sweep)."""
    ov = [a for a in args if not a.startswith("-")]
    if "-m" in args or "--multirun" in args:
        parsed = OverridesParser.create().parse_overrides(ov)
        points = BasicSweeper.split_arguments(parsed, None)[0]
    else:
        points = [ov]
    cfgs = []
    for p in points:
        if substitute:  # the bundled twin in place of a GPU model (same keys, no weights)
            model = next((o[6:] for o in p if o.startswith("model=")), "pixtral_12b")
            p = [o for o in p if not o.startswith(("model=", "model.path="))]
            p.append(f"model={GPU_MODELS.get(model, model)}")
        cfgs.append(composed(tuple(p)))
    return cfgs


def run_runner(args: list[str], store: Path) -> None:
    """`python -m runner ARGS` as written: a dry run (in this process), `--cfg job` or
    `--help` (composition); anything else would start an engine."""
    if "--help" in args or "--cfg" in args:
        compose_points([a for a in args if a not in ("--cfg", "job", "--help")], False)
        return
    assert "dry_run=true" in args, "starts an engine: mark the block <!-- docs: needs gpu -->"
    from runner.job.recipe import Job

    for cfg in compose_points([*args, f"store.root={store}"], False):
        s = Job(cfg, [a for a in args if "=" in a]).run()
        assert s.status == "planned", s


def run_results(args: list[str]) -> None:
    from runner.results.cli.main import main

    try:
        code = main(args)
    except SystemExit as e:  # --help
        code = e.code or 0
    assert code == 0, f"exit {code}"


def module_exists(mod: str) -> bool:
    """The runner's own modules by their files (importing them costs seconds), others by
    their import spec."""
    if mod.split(".")[0] == "runner":
        base = ROOT.joinpath(*mod.split("."))
        return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()
    return importlib.util.find_spec(mod) is not None


CREATED: set[str] = set()  # sets an earlier command writes (`--out prompts/NAME`)


def check_static(cmd: list[str]) -> None:
    if "--out" in cmd and cmd[cmd.index("--out") + 1].startswith("prompts/"):
        CREATED.add(cmd[cmd.index("--out") + 1].split("/", 1)[1])
    if cmd[:2] == ["python", "-m"]:
        mod = cmd[2]
        assert module_exists(mod), f"no module {mod}"
        if mod in ("runner", "runner.serve"):
            from runner.engine.args import check_engine_args, engine_spec, served
            from runner.plan.load import find_set

            for cfg in compose_points(cmd[3:], True):  # the set it names ships
                if cfg.prompts.get("benchmark"):  # a preset: imported on first use
                    from runner.benchmarks.importers import PROTOCOL

                    assert cfg.prompts.benchmark in PROTOCOL, cfg.prompts.benchmark
                elif cfg.prompts.root == "prompts" and cfg.prompts.name not in CREATED:
                    find_set(cfg.prompts.name, ROOT / "prompts")
                if not served(cfg):  # engine.extra: vLLM's argument names
                    check_engine_args(engine_spec(cfg, ROOT / "prompts")[0])
    elif cmd[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(cmd[1:]) <= targets, f"no make target {set(cmd[1:]) - targets}"
    elif cmd[0] == "python" and cmd[1].endswith(".py"):
        assert (ROOT / cmd[1]).is_file(), f"no script {cmd[1]}"
    else:
        assert cmd[0] in TOOLS, f"unknown tool {cmd[0]}: add it to TOOLS or mark the block"


# ---- keys, links, section references, paths ----------------------------------------------


def composed_keys() -> set[str]:
    keys: set[str] = set()

    def walk(node: object, prefix: str) -> None:
        keys.add(prefix)
        if isinstance(node, dict) and not prefix.endswith((".extra", ".env", ".extra_body")):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))

    run = OmegaConf.to_container(composed(()), resolve=False)
    judging = OmegaConf.to_container(composed((), "judging"), resolve=False)
    walk(run, "")
    walk(judging, "")
    return keys


def named_keys(text: str) -> list[str]:
    pat = rf"(?<![\w./-])\+?((?:{'|'.join(GROUPS)})\.[a-z_][\w]*(?:\.[a-z_]\w*)*)"
    out = []
    for k in re.findall(pat, text):
        if k.rsplit(".", 1)[-1] in FILE_EXT or k.split(".", 1)[1] in FILE_EXT:
            continue
        parts = k.split(".")
        for free in ("extra", "env", "extra_body", "limit_mm_per_prompt"):
            if free in parts[:-1]:  # free-form dicts: the key up to them
                parts = parts[:parts.index(free) + 1]
        out.append(".".join(parts))
    return out


BARE = re.compile(r"(?<![\w/.<>-])((?:runner|conf|docs|tests|scripts|bench|requirements|"
                  r"hydra_plugins)/[\w./-]*\.(?:py|md|yaml|json|jsonl|txt|sh|toml|lock))\b")


def named_paths(text: str) -> list[str]:
    out = [p for p in BARE.findall(text) if not re.search(r"\.\.\.|NAME", p)]
    for span in re.findall(r"`([^`\n]+)`", text):
        p = span.split(":")[0].split(" ")[0].rstrip(".,")
        if p.startswith(TOP) or p in ("Makefile", "pyproject.toml", "README.md"):
            if not re.search(r"[<>*{}\[\]$]|\.\.\.|NAME|\bN\b", p):
                out.append(p)
    return list(dict.fromkeys(out))


@dataclass
class Ref:
    start: int
    name: str
    page: str | None  # another page's file name, or None: this page
    direction: str | None  # "above", "below" or None


REFS = [  # (pattern, group of the name, group of the direction, group of the page)
    (r"\b(below|above)[:,]?\s+\"([^\"]+)\"", 2, 1, None),
    (r"\"([^\"]+)\",?\s+(below|above)\b", 1, 2, None),
    (r"\(([A-Z][^()\"`]*?),\s+(below|above)\)", 1, 2, None),
    (r"\b(?:see|in)\s+(?:\[[^\]]*\]\()?(?:docs/)?([\w-]+\.md)\)?,?\s+\"([^\"]+)\"", 2, None, 1),
    (r"\bsee\s+\"([^\"]+)\"", 1, None, None),
]


def section_refs(text: str) -> list[Ref]:
    seen: dict[int, Ref] = {}
    for pat, name, direction, page in REFS:
        for m in re.finditer(pat, text):
            if "<" in m.group(name):  # a placeholder, as in docs/development.md
                continue
            r = Ref(m.start(), " ".join(m.group(name).split()),
                    m.group(page) if page else None, m.group(direction) if direction else None)
            if not any(abs(r.start - s) < 80 and o.name == r.name for s, o in seen.items()):
                seen[m.start()] = r
    return list(seen.values())


def norm(h: str) -> str:
    return " ".join(h.replace("`", "").lower().split()).rstrip(".")


def unresolved(page: Path, text: str, ref: Ref) -> str | None:
    """Why `ref` does not resolve (None: it does): its heading on the page it names, in the
    direction it says."""
    dest = (ROOT / "docs" / ref.page) if ref.page else page
    if not dest.exists():
        return f"section \"{ref.name}\": no page {ref.page}"
    want = norm(ref.name)
    body = dest.read_text()
    for m in re.finditer(r"^#+ (.+)$", body, re.M):
        h = norm(m.group(1))
        if h == want or h.startswith((want + ":", want + " (")):
            if ref.direction == "below" and m.start() < ref.start:
                return f"section \"{ref.name}\" is above, not below"
            if ref.direction == "above" and m.start() > ref.start:
                return f"section \"{ref.name}\" is below, not above"
            return None
    return f"section \"{ref.name}\" is not a heading of {dest.relative_to(ROOT)}"


@pytest.fixture
def hydra_once():
    """One Hydra initialization for every composition of a test (restored after it)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    _composed.cache_clear()


@pytest.mark.slow
def test_every_command_key_link_section_and_path_in_the_docs(tmp_path, monkeypatch, capsys,
                                                             hydra_once):
    cmds, illustrations = commands()
    n = Counts(illustrations=illustrations)
    failures: list[str] = []
    template = tmp_path / "template"
    fixture_store(template)
    for i, c in enumerate(cmds):
        here = tmp_path / str(i)  # each command in its own folder, on its own copy of the store
        here.mkdir()
        (here / "prompts").symlink_to(ROOT / "prompts")
        monkeypatch.chdir(here)  # the results commands read ./outputs, write files here
        try:
            argv = shlex.split(c.text)
            if c.mark == "needs gpu":
                check_static(argv)
                n.composed += 1
            elif argv[:3] == ["python", "-m", "runner"]:
                run_runner(argv[3:], here / "outputs")
                n.run += 1
            elif argv[:3] == ["python", "-m", "runner.results"]:
                shutil.copytree(template, here / "outputs")
                run_results(argv[3:])
                n.run += 1
            else:
                raise AssertionError("not a command the docs test can run: mark the block "
                                     "<!-- docs: needs gpu --> or <!-- docs: illustration -->")
        except Exception as e:  # noqa: BLE001 - every failing line is listed at once
            failures.append(f"{c.where()}\n    -> {type(e).__name__}: {e}")
    for page in PAGES:  # inline `python -m ...` spans: the module exists, overrides compose
        text = page.read_text()
        for m in re.finditer(r"`(python -m [^`]+)`", text):
            if re.search(r"\.\.\.|[<\[|]|HASH|COMMAND|MODULE", m.group(1)):
                continue
            n.inline += 1
            try:
                check_static(shlex.split(m.group(1)))
            except Exception as e:  # noqa: BLE001
                failures.append(f"{page.relative_to(ROOT)}:{lineno(text, m.start())}: "
                                f"{m.group(1)}\n    -> {type(e).__name__}: {e}")
    capsys.readouterr()

    keys = composed_keys()
    for page in [*PAGES, *sorted(CONF.rglob("*.yaml")), *sorted(ROOT.glob("prompts/*/set.yaml"))]:
        text = page.read_text()
        rel = page.relative_to(ROOT)
        for k in named_keys(text):
            n.keys.add(k)
            if k not in keys and f"+{k}" not in text:
                failures.append(f"{rel}: config key {k} is not in the composed config")
        base = page.parent
        for p in named_paths(text):
            n.paths.add(p)
            if not (ROOT / p).exists() and not (base / p).exists():
                failures.append(f"{rel}: path {p} does not exist")
        if page.suffix != ".md":
            continue
        for m in re.finditer(r"\bissue \d+", text):  # a tracker number means nothing to a user
            failures.append(f"{rel}:{lineno(text, m.start())}: \"{m.group(0)}\": say what "
                            "changed instead")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            n.links += 1
            file, _, anchor = target.partition("#")
            dest = (base / file).resolve() if file else page
            if not dest.exists():
                failures.append(f"{rel}:{lineno(text, m.start())}: link {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in {
                    slug(h) for h in headings(dest)}:
                failures.append(f"{rel}:{lineno(text, m.start())}: link {target}: no heading")
        for ref in section_refs(text):
            n.sections += 1
            if (bad := unresolved(page, text, ref)) is not None:
                failures.append(f"{rel}:{lineno(text, ref.start)}: {bad}")
    line = (f"docs test: {n.run} commands run, {n.composed} composed or checked (needs gpu or "
          f"engine), {n.inline} inline commands composed, {n.illustrations} illustration "
          f"blocks, {len(n.keys)} config keys, "
          f"{n.links} links, {n.sections} section references, {len(n.paths)} paths")
    print(line)
    if os.environ.get("RUNNER_DOCS_COUNTS"):  # shown under the lane's summary (conftest.py)
        Path(os.environ["RUNNER_DOCS_COUNTS"]).write_text(line + "\n")
    assert not failures, "\n".join(failures)
    assert n.run and n.composed and n.keys and n.links and n.paths


def test_the_checker_catches_what_it_claims_to(tmp_path, hydra_once):
    """The parsers find a command, a key, a path and a section reference that are wrong."""
    assert named_keys("set `engine.tensor_paralel_size=2` or `model.py`") == [
        "engine.tensor_paralel_size"]
    assert "engine.tensor_paralel_size" not in composed_keys()
    assert named_paths("see `runner/tiny_hf.py: build`") == ["runner/tiny_hf.py"]
    assert named_paths("# a twin (runner/tiny_hf.py): the same") == ["runner/tiny_hf.py"]
    with pytest.raises(AssertionError, match="no module runner.tiny_hf"):
        check_static(["python", "-m", "runner.tiny_hf"])
    with pytest.raises(AssertionError, match="unknown tool"):
        check_static(["curl", "x"])
    with pytest.raises(AssertionError, match="starts an engine"):
        run_runner(["model=pixtral_tiny"], tmp_path)
    with pytest.raises(Exception, match="did you mean kv_cache_dtype"):
        check_static(["python", "-m", "runner", "+engine.extra.kv_cache_dtyp=fp8"])
    with pytest.raises(Exception, match="nope"):
        check_static(["python", "-m", "runner", "prompts.name=nope"])
    with pytest.raises(AssertionError, match="not a heading"):
        text = 'a key (the runner\'s, below: "When the engine dies")'
        raise AssertionError(unresolved(ROOT / "docs/configuration.md", text,
                                        section_refs(text)[0]))
