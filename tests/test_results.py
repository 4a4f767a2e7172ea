"""The results CLI and the run index on fake run folders (written with the store's own helpers),
through real `python -m runner.results` processes. No engine."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import fakes
from conftest import ROOT, make_cfg
from runner.results.runs import index
from runner.store.rundir import RunDir, run_hash

TINY = ("model=pixtral_tiny", "engine=cpu")


def record(item_id: str, output: str | None, error: str | None = None) -> dict:
    return fakes.record(item_id, output, error=error,
                        images=[{"path": f"images/{item_id}.png", "sha256": "ab" * 32}],
                        expected="Q3" if item_id == "chart" else None, tags=["t1", "t2"])


def make_run(root: Path, overrides: tuple[str, ...], items: list[dict], created: str,
             status: str = "complete", metrics: dict | None = None,
             name: str | None = None) -> str:
    cfg = make_cfg(*overrides, f"store.root={root}")
    name = name or run_hash(cfg)
    counts = fakes.manifest(name, items)["counts"] | {"planned": 4}
    fakes.write_run(root, name, items, config=cfg, overrides=list(overrides), metrics=metrics,
                    created=created, started=created, finished=created, status=status,
                    model=cfg.model.name, counts=counts)
    return name


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("template") / "outputs"
    runs = {
        "a": make_run(root, TINY, [record("chart", "Q3"), record("receipt", "8.00"),
                                   record("table", None, error="prompt too long")],
                      "2026-11-20T10:00:00+00:00", metrics={"accuracy": 0.5}),
        "b": make_run(root, (*TINY, "sampling.temperature=0.7", "sampling.seed=1"),
                      [record("chart", "Q3"), record("receipt", "9.00"),
                       record("extra", "[bold]not markup[/]")],
                      "2026-11-24T09:00:00+00:00"),
        "c": make_run(root, ("engine=cpu",), [record("chart", "Q4")],
                      "2026-11-22T08:00:00+00:00", status="interrupted"),
    }
    return root, runs


@pytest.fixture
def store(template, tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "outputs"
    shutil.copytree(template[0], root)
    return root, dict(template[1])


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.results", "--root", str(root), *args],
                          cwd=ROOT, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=120, env={**os.environ, "COLUMNS": "250"})


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def user_error(p: subprocess.CompletedProcess) -> str:
    """The one-sentence error: exit code 2, no traceback; returns it with spaces collapsed."""
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    return " ".join(p.stderr.split())


def ls(root: Path, *args: str) -> list[dict]:
    return [json.loads(x) for x in ok(cli(root, "ls", "--json", *args)).splitlines()]


def indexed(root: Path) -> dict[str, str]:
    con = sqlite3.connect(root / "index.sqlite")
    try:
        return dict(con.execute("SELECT hash, status FROM runs"))
    finally:
        con.close()


def test_ls_newest_first_with_filters(store):
    root, h = store
    rows = ls(root)
    assert [r["hash"] for r in rows] == [h["b"], h["c"], h["a"]]
    a = rows[2]
    assert (a["status"], a["model"], a["prompts"]) == ("complete", "pixtral-tiny", "sample")
    assert (a["items_stored"], a["items_errored"]) == (3, 1)
    assert (a["prompt_tokens"], a["completion_tokens"], a["tokens_per_s"]) == (200, 14, 7.0)
    assert a["overrides"] == [*TINY] and a["metrics"] == {"accuracy": 0.5}
    assert (rows[0]["temperature"], rows[0]["seed"], rows[0]["max_tokens"]) == (0.7, 1, 256)
    assert rows[1]["model"] == "pixtral-12b-2409" and rows[1]["metrics"] is None
    assert [r["hash"] for r in ls(root, "--model", "TINY")] == [h["b"], h["a"]]
    assert [r["hash"] for r in ls(root, "--status", "interrupted")] == [h["c"]]
    assert [r["hash"] for r in ls(root, "--since", "2026-11-22")] == [h["b"], h["c"]]
    assert ls(root, "--since", "2026-11-22", "--model", "12b") == [rows[1]]
    table = ok(cli(root, "ls"))
    lines = [x for x in table.splitlines() if h["a"] in x]
    assert len(lines) == 1 and "accuracy=0.5" in lines[0] and "3 (1 err)" in lines[0]
    assert table.index(h["b"]) < table.index(h["c"]) < table.index(h["a"])
    assert "3 runs in" in table
    assert "YYYY-MM-DD" in user_error(cli(root, "ls", "--since", "last week"))


def test_ls_imports_neither_vllm_nor_torch(store):
    root, _ = store
    ok(cli(root, "ls"))  # the index exists; what follows is the everyday path
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner.results", "--root",
                        str(root), "ls"], cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    mods = {x.rsplit("|", 1)[-1].strip() for x in p.stderr.splitlines()
            if x.startswith("import time:")}
    assert not {m for m in mods if m.split(".")[0] in ("vllm", "torch", "hydra", "matplotlib")}


def test_index_is_rebuilt_when_deleted_corrupt_or_stale(store):
    root, h = store
    assert len(ls(root)) == 3 and set(indexed(root)) == set(h.values())
    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()

    for suffix in ("", "-wal", "-shm"):  # deleted
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert [r["hash"] for r in ls(root)] == [h["b"], h["c"], h["a"]]
    assert set(indexed(root)) == set(h.values())

    (root / "index.sqlite").write_bytes(os.urandom(4096))  # corrupt: not SQLite at all
    assert [r["hash"] for r in ls(root)] == [h["b"], h["c"], h["a"]]
    assert set(indexed(root)) == set(h.values())

    new = make_run(root, (*TINY, "sampling.max_tokens=32"), [record("chart", "Q3")],
                   "2026-11-25T07:00:00+00:00", status="running")  # a folder appears
    rows = ls(root)
    assert rows[0]["hash"] == new and rows[0]["status"] == "running"
    assert rows[0]["max_tokens"] == 32

    rd = RunDir(root, new)  # its manifest changes, then scoring adds metrics.json
    rd.write_manifest(rd.manifest() | {"status": "complete"})
    (rd.path / "metrics.json").write_text(json.dumps({"accuracy": 1.0}))
    row = ls(root)[0]
    assert row["status"] == "complete" and row["metrics"] == {"accuracy": 1.0}
    assert indexed(root)[new] == "complete"

    shutil.rmtree(root / h["c"])  # a folder removed by hand
    assert [r["hash"] for r in ls(root)] == [new, h["b"], h["a"]]


def test_upsert_and_rebuild_api(store):
    root, h = store
    assert index.rebuild(root) == 3 and set(indexed(root)) == set(h.values())
    new = make_run(root, (*TINY, "sampling.n=2"), [record("chart", "Q3")],
                   "2026-11-25T07:00:00+00:00")
    index.upsert(root, root / new)
    assert indexed(root)[new] == "complete"
    shutil.rmtree(root / new)
    index.upsert(root, root / new)  # a folder gone: its row goes too
    assert new not in indexed(root)
    (root / "index.sqlite").write_bytes(b"garbage" * 100)
    index.upsert(root, root / h["a"])  # repairs instead of failing the run
    assert set(indexed(root)) == set(h.values())
    (root / "index.sqlite").write_bytes(b"garbage" * 100)
    assert index.rebuild(root) == 3


UPSERTS = """
import sys
from pathlib import Path
from runner.results.runs import index
root = Path(sys.argv[1])
for i in range(15):
    for h in sys.argv[2:]:
        index.upsert(root, root / h)
"""


def test_concurrent_writers_do_not_corrupt_the_index(store):
    root, h = store
    (root / "index.sqlite").unlink(missing_ok=True)  # they also race to create it
    procs = [subprocess.Popen([sys.executable, "-c", UPSERTS, str(root), *h.values()],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for _ in range(5):
        assert len(ls(root)) == 3
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0 and "warning" not in stderr, stderr
    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    con.close()


def test_show(store):
    root, h = store
    s = ok(cli(root, "show", h["b"][:6], "--n", "2"))
    assert f"run {h['b']} · pixtral-tiny · sample" in s
    assert "3 stored (0 errors) of 4 planned" in s and "300 prompt · 21 generated" in s
    assert "temperature: 0.7" in s  # the resolved config
    diff = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in s.split("differs from the defaults", 1)[1].split("first ")[0]
            .splitlines() if line.count("│") == 4}
    assert diff["sampling.temperature"] == ["0.0", "0.7"]
    assert diff["sampling.seed"] == ["null", "1"]
    assert diff["engine.enforce_eager"] == ["false", "true"]  # engine=cpu
    assert not any(k.startswith("model.") for k in diff)  # composed with model=pixtral_tiny
    outputs = s.split("first 2 of 3 outputs", 1)[1]
    assert "chart" in outputs and "receipt" in outputs and "9.00" in outputs
    assert "extra" not in outputs
    c = ok(cli(root, "show", h["c"])).split("differs from the defaults", 1)[1]
    assert "engine.enforce_eager" in c and "model." not in c.split("first ")[0]
    a = ok(cli(root, "show", h["a"]))
    assert "error: prompt too long" in a and "accuracy" in a and "8.00" in a


def test_diff(store):
    root, h = store
    a8, b8 = h["a"][:8], h["b"][:8]
    d = ok(cli(root, "diff", h["a"], h["b"][:5]))
    assert "config: 2 differences" in d
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in d.splitlines() if line.count("│") >= 4}
    assert rows["sampling.temperature"] == ["0.0", "0.7"]
    assert rows["sampling.seed"] == ["null", "1"]
    assert rows["chart"] == ["Q3", "Q3", "="]
    assert rows["receipt"] == ["8.00", "9.00", "≠"]
    assert rows["table"] == ["error: prompt too long", "—", "≠"]
    assert rows["extra"] == ["—", "[bold]not markup[/]", "≠"]  # printed, not interpreted
    assert f"2 items in both: 1 identical, 1 differ; 1 only in {a8}, 1 only in {b8}." in d
    changed = ok(cli(root, "diff", h["a"], h["b"], "--changed"))
    assert "receipt" in changed and "│ chart" not in changed


def test_export_jsonl_csv_openai(store, tmp_path):
    root, h = store
    lines = [json.loads(x) for x in ok(cli(root, "export", h["a"])).splitlines()]
    assert lines == list(RunDir(root, h["a"]).read_results().values())

    rows = list(csv.DictReader(io.StringIO(ok(cli(root, "export", h["a"], "--format", "csv")))))
    assert [r["id"] for r in rows] == ["chart", "receipt", "table"]
    assert rows[0]["output"] == "Q3" and rows[0]["expected"] == "Q3"
    assert rows[0]["images"] == "images/chart.png" and rows[0]["tags"] == "t1;t2"
    assert rows[2]["status"] == "error" and rows[2]["error"] == "prompt too long"

    out = tmp_path / "batch_output.jsonl"
    p = cli(root, "export", h["a"][:7], "--format", "openai", "--out", str(out))
    assert ok(p) == "" and f"Wrote 3 items of run {h['a']}" in p.stderr
    chart, receipt, table = (json.loads(x) for x in out.read_text().splitlines())
    assert chart["custom_id"] == "chart" and chart["error"] is None
    assert chart["id"].startswith("batch_req_")
    resp = chart["response"]
    assert resp["status_code"] == 200 and resp["request_id"].startswith("req_")
    body = resp["body"]
    assert body["object"] == "chat.completion" and body["model"] == "pixtral-tiny"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Q3"},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}
    assert body["created"] == 1795168800
    assert receipt["response"]["body"]["choices"][0]["message"]["content"] == "8.00"
    assert table == {"id": table["id"], "custom_id": "table", "response": None,
                     "error": {"code": "generation_error", "message": "prompt too long"}}
    assert len({chart["id"], receipt["id"], table["id"]}) == 3
    # Stable: exporting again gives the same bytes.
    assert ok(cli(root, "export", h["a"], "--format", "openai")) == out.read_text()


def test_hash_prefixes_and_errors(store):
    root, h = store
    make_run(root, TINY, [record("chart", "x")], "2026-11-01T00:00:00+00:00",
             name="abc1000000000000")
    make_run(root, TINY, [record("chart", "y")], "2026-11-01T00:00:00+00:00",
             name="abc2000000000000")
    assert "│ chart" in ok(cli(root, "show", "abc1"))
    msg = user_error(cli(root, "show", "abc"))
    assert msg == ("error: Hash prefix 'abc' is ambiguous: abc1000000000000, "
                   "abc2000000000000.")
    assert user_error(cli(root, "diff", h["a"], "ffffzz")) == (
        f"error: No run matches 'ffffzz' in {root}.")
    assert "No store at" in user_error(cli(root / "nowhere", "ls"))


def test_rm(store):
    root, h = store
    assert "without --yes" in user_error(cli(root, "rm", h["a"][:6]))
    assert (root / h["a"]).is_dir()

    with RunDir(root, h["a"]).lock(wait=False, on_wait=print):  # a live writer
        assert f"Run {h['a']} is being written by pid {os.getpid()}" in user_error(
            cli(root, "rm", h["a"], "--yes"))
    assert (root / h["a"]).is_dir() and (root / ".locks" / f"{h['a']}.lock").exists()

    ls(root)
    assert f"Removed run {h['a']}." in ok(cli(root, "rm", h["a"][:6], "--yes"))
    assert not (root / h["a"]).exists() and not (root / ".locks" / f"{h['a']}.lock").exists()
    assert set(indexed(root)) == {h["b"], h["c"]}
    assert not [p for p in root.iterdir() if p.name.startswith(".rm-")]

    (root / "index.sqlite").unlink()  # consistent even without an index
    ok(cli(root, "rm", h["c"], "--yes"))
    assert [r["hash"] for r in ls(root)] == [h["b"]] and set(indexed(root)) == {h["b"]}
    assert "No run matches" in user_error(cli(root, "rm", h["c"], "--yes"))


REPORT = """
import sys, types
from pathlib import Path
fake = {fake!r}
if fake:
    m = types.ModuleType("runner.results.report.html")
    def build_report(run_dirs: list, out: Path, **options) -> Path:
        out.write_text("\\n".join(p.path.name for p in run_dirs))
        return out
    m.build_report = build_report
    sys.modules["runner.results.report.html"] = m
from runner.results.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def report(root: Path, *args: str, fake: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", REPORT.format(fake=fake), "--root", str(root),
                           "report", *args], cwd=ROOT, text=True, capture_output=True,
                          timeout=120)


def test_report_runs_and_sweeps(store, tmp_path):
    root, h = store
    out = tmp_path / "r.html"
    assert "Wrote" in ok(report(root, h["c"][:6], h["a"], "--out", str(out)))
    assert out.read_text().splitlines() == [h["c"], h["a"]]

    sweep = root / ".sweeps" / "2026-11-25_09-00-00"
    for job in ("0", "1"):
        (sweep / job).mkdir(parents=True)  # Hydra's job folders: nothing useful inside
    assert "has no readable runs.json" in user_error(
        report(root, "--sweep", str(sweep), "--out", str(out)))
    (sweep / "runs.json").write_text(json.dumps([{"hash": h["b"]}, {"hash": h["a"]}]))
    ok(report(root, "--sweep", sweep.name, "--out", str(out)))  # a name under .sweeps/ works
    assert out.read_text().splitlines() == [h["b"], h["a"]]
    ok(report(root, h["a"], "--sweep", str(sweep), "--out", str(out)))  # union, no repeats
    assert out.read_text().splitlines() == [h["a"], h["b"]]

    assert "Name the runs" in user_error(report(root, "--out", str(out)))
    assert "--chunk takes a positive" in user_error(report(root, h["a"], "--chunk", "0"))
    assert "Cannot write the report to" in user_error(
        report(root, h["a"], "--out", str(tmp_path), fake=False))  # a folder: one sentence
