"""The HTML report, built from fake run folders on disk and rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import fakes
from runner.html_report import build_report, config_diff
from runner.score import score_run

N_ITEMS = 130  # more than a page (100): the second page is checked too
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_set(folder: Path, n: int = N_ITEMS) -> Path:
    """A prompt set with real PNGs: item 0 has two images, item 1 none, the rest one each."""
    (folder / "images").mkdir(parents=True)
    items = []
    for i in range(n):
        ims = []
        for j in range(2 if i == 0 else 0 if i == 1 else 1):
            p = f"images/im{i}_{j}.png"
            Image.new("RGB", (40 + i % 7, 30), (i * 37 % 256, j * 90, 200)).save(folder / p)
            ims.append(p)
        item = {"id": f"q{i}", "text": f"Question {i}?", "expected": str(i), "tags": [f"t{i % 2}"]}
        if ims:
            item["images"] = ims
        items.append(item)
    f = folder / "set.yaml"
    f.write_text(yaml.safe_dump({"name": folder.name, "scorer": "numeric", "items": items}))
    return f


def make_run(root: Path, name: str, set_file: Path, prompts: dict, temperature: float,
             model: str, answers: dict[int, str], n: int = N_ITEMS,
             errors: tuple[int, ...] = ()) -> Path:
    """A run of the first `n` items of the set, answered "I think it is <i>." unless given."""
    cfg = {"model": {"name": model, "path": f"data/{model}"},
           "sampling": {"temperature": temperature, "max_tokens": 64},
           "prompts": prompts, "store": {"root": "outputs"}}
    doc = yaml.safe_load(set_file.read_text())
    recs = []
    for i, it in enumerate(doc["items"][:n]):
        fields = {"key": f"{name}-{i}", "prompt": it["text"], "expected": it["expected"],
                  "tags": it["tags"], "prompt_tokens": 10, "completion_tokens": 5,
                  "images": [{"path": p, "sha256": f"sha-{p}"} for p in it.get("images", [])]}
        recs.append(fakes.record(it["id"], error="image too large", **fields) if i in errors
                    else fakes.record(it["id"], answers.get(i, f"I think it is {i}."), **fields))
    return fakes.write_run(root, name, recs, config=cfg, model=model,
                           throughput={"completion_tokens_per_s": 12.5})


def make_runs(tmp_path: Path) -> list[Path]:
    """Three runs of one set: relative prompts.root (resolved against the cwd), a set-file
    path, and a run that stopped early; configs differ in model and temperature."""
    sf = make_set(tmp_path / "prompts" / "fake")
    out = tmp_path / "outputs"
    a = make_run(out, "aaaa", sf, {"name": "fake", "root": "prompts"}, 0.0, "tiny", {})
    b = make_run(out, "bbbb", sf, {"name": "prompts/fake/set.yaml", "root": "elsewhere"}, 0.7,
                 "tiny", {2: "no idea", 3: "<script>alert(1)</script>"}, errors=(4,))
    c = make_run(out, "cccc", sf, {"name": "fake", "root": "prompts"}, 0.0, "big", {}, n=50)
    for d in (a, b, c):
        score_run(d)
    return [a, b, c]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.chdir(tmp_path)
    return make_runs(tmp_path)


def test_config_diff_shows_only_differing_keys() -> None:
    c1 = {"model": {"name": "a", "path": "x"}, "sampling": {"temperature": 0.0}}
    c2 = {"model": {"name": "a", "path": "y"}, "sampling": {"temperature": 0.0, "seed": 1}}
    assert config_diff([c1, c2]) == ["model.path", "sampling.seed"]
    assert config_diff([c1]) == []


def test_report_is_self_contained(runs: list[Path], tmp_path: Path) -> None:
    page = build_report(runs, tmp_path / "r" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN, no fetch
    assert "<script>alert" not in page  # outputs are data, never markup
    data = json.loads(re.search(r'id="data" type="application/json">(.*?)</script>',
                                page, re.S).group(1))
    assert [r["label"] for r in data["runs"]] == ["aaaa", "bbbb", "cccc"]
    assert data["keys"] == ["model.name", "model.path", "prompts.name", "prompts.root",
                            "sampling.temperature"]
    assert len(data["rows"]) == N_ITEMS
    assert all(v.startswith("data:image/") for v in data["thumbs"].values())
    assert len(data["thumbs"]) == N_ITEMS  # item 0 has two images, item 1 none
    assert data["flags"][:6] == "003330"  # bbbb: 2, 3 wrong, 4 an error (all differ)
    row2 = data["rows"][2]["o"]
    assert [o["ok"] for o in row2] == [True, False, True]
    assert data["rows"][60]["o"][2] is None  # run cccc stopped at 50 items
    assert data["runs"][1]["accuracy"] == pytest.approx((N_ITEMS - 3) / N_ITEMS, abs=1e-4)


def chromium(url: str, *extra: str, cwd: Path) -> str:
    assert CHROMIUM, "chromium is missing: run scripts/setup-browser.sh (make test does)"
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={cwd / 'profile'}",
                        "--virtual-time-budget=10000", *extra, url],
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_report_renders_in_chromium(runs: list[Path], tmp_path: Path) -> None:
    out = build_report(runs, tmp_path / "report.html")
    dom = chromium(out.as_uri(), "--dump-dom", cwd=tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-rows="130"' in body and 'data-pages="2"' in body and 'data-page="1"' in body
    rows = re.findall(r'<tr data-id="(q\d+)"', dom)
    assert rows == [f"q{i}" for i in range(100)]  # page 1: 100 rows
    head = re.search(r"<thead>(.*?)</thead>", dom, re.S).group(1)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", head) == \
        ["#", "images", "prompt", "expected", "aaaa", "bbbb", "cccc"]
    first = dom[dom.index('<tr data-id="q0"'):dom.index('<tr data-id="q1"')]
    assert first.count("<td") == 7
    imgs = re.findall(r'<img class="th"[^>]*>', dom)
    assert len(imgs) == 100  # 2 + 0 + 98
    loaded = [int(re.search(r'data-w="(\d+)"', i).group(1)) for i in imgs if 'data-loaded="1"' in i]
    assert len(loaded) == 100 and min(loaded) > 0  # every thumbnail decoded
    assert dom.count('class="mark ok"') > 0 and dom.count('class="mark bad"') >= 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text
    assert "config: the keys that differ" in dom and "sampling.temperature" in dom

    dom2 = chromium(out.as_uri() + "#page=2", "--dump-dom", cwd=tmp_path)
    assert re.findall(r'<tr data-id="(q\d+)"', dom2) == [f"q{i}" for i in range(100, N_ITEMS)]
    assert "not in this run" in dom2  # run cccc has 50 items


if __name__ == "__main__":  # a screenshot to look at: python tests/test_report.py OUT.png
    import os
    import tempfile

    shot = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as t:
        os.chdir(t)
        rep = build_report(make_runs(Path(t)), Path(t) / "report.html")
        chromium(rep.as_uri(), "--window-size=1400,1000", f"--screenshot={shot}", cwd=Path(t))


def test_report_without_the_set_folder(runs: list[Path], tmp_path: Path) -> None:
    """Images that cannot be found are listed as missing, the rest of the page stays."""
    shutil.rmtree(tmp_path / "prompts")
    page = build_report(runs[:1], tmp_path / "r.html").read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["keys"] == [] and len(data["rows"]) == N_ITEMS
    assert data["thumbs"] == {}
    assert {n for r in data["rows"] for n, _, _ in r["im"]} == {None}  # shown as missing
