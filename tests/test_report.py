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
from browser import Browser
from PIL import Image

import fakes
from runner.results.card.compare import compare_runs
from runner.results.report.html import CUT, build_report, config_diff
from runner.results.runs.load import load_run
from runner.results.scoring.score import score_run

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
             errors: tuple[int, ...] = (), extra: dict[int, dict] | None = None) -> Path:
    """A run of the first `n` items of the set, answered "I think it is <i>." unless given;
    `extra` adds fields to some items' records."""
    cfg = {"model": {"name": model, "path": f"data/{model}"},
           "sampling": {"temperature": temperature, "max_tokens": 64},
           "prompts": prompts, "store": {"root": "outputs"}}
    doc = yaml.safe_load(set_file.read_text())
    recs = []
    for i, it in enumerate(doc["items"][:n]):
        # the same item in every run has the same key (its content), as the job writes it
        fields = {"key": f"item-{i}", "prompt": it["text"], "expected": it["expected"],
                  "tags": it["tags"], "prompt_tokens": 10, "completion_tokens": 5,
                  "images": [{"path": p, "sha256": f"sha-{p}"} for p in it.get("images", [])]}
        fields |= (extra or {}).get(i, {})
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
    assert data["flags"][:6] == "007770"  # bbbb: 2, 3 wrong, 4 an error: differ, flips
    want = compare_runs([load_run(r) for r in runs])["pairs"]  # the header's, unchanged
    assert [(p["other"], p["n"], p["delta"], p["p"], p["r2w"], p["w2r"]) for p in data["pairs"]] \
        == [(p["other"], p["n_paired"], p["delta"], p["mcnemar_p"], p["right_to_wrong"],
             p["wrong_to_right"]) for p in want]
    assert [p["r2w"] for p in data["pairs"]] == [3, 0] and data["pairs"][1]["n"] == 50
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
    assert 'data-chunks-loaded="1"' in body  # one file: its rows are its one chunk
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


# ---- a report in chunks: lazy rows, filters over every chunk, thumbnails, full images ----

BIG, CHUNK = 3000, 100  # 30 chunks: enough to prove paging and filtering across them
WRONG = list(range(2, BIG, 97))  # run bbbb's wrong answers, one in most chunks
ZEBRA = [1234, 2950]  # a word only these outputs have (chunks 12 and 29)


def make_big_runs(tmp_path: Path) -> list[Path]:
    """Two runs of BIG items sharing 40 images (320x200; image 0 a noisy photo, the rest
    flat); run bbbb is wrong on WRONG (item 2 at length), says "zebra" on ZEBRA and has
    three samples of item 0 (sampling.n > 1: right, wrong, right)."""
    sdir = tmp_path / "prompts" / "big"
    (sdir / "images").mkdir(parents=True)
    Image.effect_noise((320, 200), 60).convert("RGB").save(sdir / "images" / "0.jpg")
    for k in range(1, 40):
        Image.new("RGB", (320, 200), (k * 6, 100, 200)).save(sdir / "images" / f"{k}.png")
    items = [{"id": f"q{i}", "text": f"Question {i}?", "expected": str(i), "tags": ["t"],
              "images": [f"images/{i % 40}.{'jpg' if i % 40 == 0 else 'png'}"]}
             for i in range(BIG)]
    sf = sdir / "set.yaml"
    sf.write_text(yaml.safe_dump({"name": "big", "scorer": "numeric", "items": items}))
    out = tmp_path / "outputs"
    wrong = {i: "no idea " * (700 if i == 2 else 1) for i in WRONG}
    zebra = {i: f"I think it is {i}, said the zebra." for i in ZEBRA}
    prompts = {"name": "big", "root": str(tmp_path / "prompts")}
    samples = [{"text": t, "finish_reason": "stop"} for t in ("It is 0.", "7", "0, surely")]
    runs = [make_run(out, "aaaa", sf, prompts, 0.0, "tiny", {}, n=BIG),
            make_run(out, "bbbb", sf, prompts, 0.7, "tiny", wrong | zebra | {0: "It is 0."},
                     n=BIG, extra={0: {"outputs": samples}})]
    for d in runs:
        score_run(d)
    return runs


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Built once for the module (a few seconds); each test writes its own report."""
    return make_big_runs(tmp_path_factory.mktemp("big"))


@pytest.mark.slow
def test_big_report_is_a_folder_of_chunks_with_cached_thumbnails(
        big: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = big
    cache = tmp_path / "cache"
    page = build_report(runs, tmp_path / "big.html", chunk=CHUNK, cache=cache)
    folder = tmp_path / "big"
    assert page == folder / "index.html" and not (tmp_path / "big.html").exists()
    assert sorted(p.name for p in (folder / "c").iterdir()) == \
        sorted(f"{k}.js" for k in range(BIG // CHUNK))
    assert [p.name for p in (folder / "f").iterdir()] == ["0.js"]  # item 2's long output
    thumbs = sorted((folder / "t").iterdir())
    assert len(thumbs) == 40 and sum(p.suffix == ".webp" for p in thumbs) == 1  # each once
    text = page.read_text()
    charts = re.search(r'<section id="charts">.*?</section>', text, re.S).group(0)
    assert len(text) - len(charts) < 20_000 + 2 * BIG  # the rows (~150 kB) are in the chunks
    assert len(charts) < 40_000  # the charts (issue 43) hold aggregates, nothing per item
    data = json.loads(re.search(r'type="application/json">(.*?)</script>',
                                page.read_text(), re.S).group(1))
    flagged = [[i for i, f in enumerate(data["flags"]) if int(f) & bit] for bit in (1, 2, 4)]
    assert flagged == [WRONG, sorted([0, *WRONG, *ZEBRA]), WRONG]  # wrong, differ, flips

    assert len(list(cache.iterdir())) == 40

    import runner.results.report.thumbs as th

    def fail(file: Path) -> None:
        raise AssertionError(f"thumbnail of {file} recomputed")

    monkeypatch.setattr(th, "render", fail)  # a rebuild takes every thumbnail from the cache
    build_report(runs, tmp_path / "big.html", chunk=CHUNK, full_images=True, cache=cache)
    assert len(list((folder / "t").iterdir())) == 40
    assert sorted(p.name for p in (folder / "i").iterdir())[:2] == \
        sorted(p.stem + {".webp": ".jpg"}.get(p.suffix, ".png") for p in thumbs)[:2]


@pytest.mark.slow
def test_big_report_in_chromium(big: list[Path], tmp_path: Path) -> None:
    """Opens at its first chunk, pages, filters over every chunk, shows a thumbnail, then
    the full image, and the whole of a cut output."""
    page = build_report(big, tmp_path / "big.html", chunk=CHUNK)
    store = big[0].parent
    assert len(list((store / ".cache" / "thumbs").iterdir())) == 40  # the default cache
    assert not list((store.parent / "prompts").rglob(".cache"))  # not in the set's folder
    ids = "[...document.querySelectorAll('#items tbody tr')].map((t) => t.dataset.id)"
    body = "document.body.dataset"
    with Browser(tmp_path / "profile") as b:
        b.open(page.as_uri())
        b.wait(f"{body}.firstMs")
        assert b.js(ids) == [f"q{i}" for i in range(100)]
        assert b.js(f"[{body}.chunksLoaded, {body}.pages, {body}.matches]") == ["1", "30", "3000"]
        thumb = "document.querySelector('tr[data-id=q0] img.th')"
        assert b.js(f"{thumb}.dataset.loaded") == "1"
        assert b.js(f"{thumb}.naturalWidth") == 160  # a thumbnail of the 320 px original
        b.js(f"{thumb}.click()")
        assert b.wait("document.getElementById('lbimg').dataset.loaded") == "1"
        assert b.js("document.getElementById('lbimg').naturalWidth") == 320  # the original
        assert b.js("document.getElementById('lb').hidden") is False
        assert b.js("document.getElementById('lbimg').src").endswith("/prompts/big/images/0.jpg")
        b.js("document.getElementById('lb').click()")

        # issue 22: compare.py's numbers in the header, every sample of an item
        got = compare_runs([load_run(r) for r in big])
        want, sampled = got["pairs"][0], got["runs"][1]["samples"]
        lo, hi = (f"{'−' if x < 0 else '+'}{abs(100 * x):.1f}" for x in want["ci95"])
        assert b.js("document.querySelector('#runs .pair').textContent") == (
            f"Δ −1.0 pts [{lo}, {hi}] · McNemar p < 0.001 · flips: {len(WRONG)} right→wrong, "
            f"0 wrong→right ({BIG} paired)")
        assert f"n 3 · pass@1 {100 * sampled['pass@1']:.1f}%" in \
            b.js("document.getElementById('runs').textContent")
        cell = "document.querySelector('tr[data-id=q0] td:last-child')"
        b.js(f"{cell}.querySelector('a.more').click()")
        assert b.wait(f"{cell}.querySelectorAll('ol.samples li').length") == 3
        assert b.js(f"[...{cell}.querySelectorAll('ol.samples .mark')].map((m) => m.className)"
                    ) == ["mark ok", "mark bad", "mark ok"]

        b.js("document.getElementById('next').click()")
        b.wait(f"{body}.page === '2'")
        assert b.js(ids) == [f"q{i}" for i in range(100, 200)]
        assert b.js(f"{body}.chunksLoaded") == "2"  # only what the pages needed

        def toggle(box: str) -> None:
            b.js(f"(() => {{ const c = document.getElementById('{box}'); c.checked = !c.checked;"
                 "c.dispatchEvent(new Event('input')); })()")

        toggle("wrong")
        b.wait(f"{body}.matches === '{len(WRONG)}' && {body}.page === '1'")
        assert b.js(ids) == [f"q{i}" for i in WRONG]  # from 30 chunks, all on one page
        more = "document.querySelector('tr[data-id=q2] a.more')"
        assert "show all 5600 characters" in b.js(f"{more}.textContent")
        out = "document.querySelectorAll('tr[data-id=q2] .out')[1].textContent.length"
        assert b.js(out) == CUT + 1  # the mark, then the output's first characters
        b.js(f"{more}.click()")
        assert b.wait(f"{out} > {CUT + 1} && {out}") == 5600 + 1  # then all of it
        toggle("wrong")
        toggle("flips")
        b.wait(f"{body}.matches === '{len(WRONG)}'")  # item 0's first sample: right in both
        assert b.js(ids) == [f"q{i}" for i in WRONG]
        toggle("flips")
        toggle("differ")
        b.wait(f"{body}.matches === '{1 + len(WRONG) + len(ZEBRA)}'")
        toggle("differ")
        b.js("(() => { const q = document.getElementById('q'); q.value = 'ZEBRA';"
             "q.dispatchEvent(new Event('input')); })()")
        b.wait(f"{body}.matches === '2'")
        assert b.js(ids) == [f"q{i}" for i in ZEBRA]  # a text search over every chunk
        assert b.js(f"{body}.chunksLoaded") == "30"
        assert b.js("location.hash") == "#q=ZEBRA"


def test_full_images_linked_or_inlined(runs: list[Path], tmp_path: Path) -> None:
    """A one-file report links each original relative to itself, or inlines it."""
    def data(page: Path) -> dict:
        return json.loads(re.search(r'type="application/json">(.*?)</script>',
                                    page.read_text(), re.S).group(1))

    out = tmp_path / "r" / "report.html"
    name, path, href = data(build_report(runs, out))["rows"][0]["im"][0]
    assert path == "images/im0_0.png" and (out.parent / href).resolve() == \
        (tmp_path / "prompts" / "fake" / path).resolve()
    d = data(build_report(runs, out, full_images=True))
    name, path, href = d["rows"][0]["im"][0]
    assert href is None and d["orig"][name].startswith("data:image/png;base64,")


def test_read_only_store_keeps_its_thumbnails_elsewhere(
        runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store the user cannot write to still gets a report; the thumbnails go to the
    user's own cache in the temp folder."""
    import runner.results.report.thumbs as th

    monkeypatch.setattr(th.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(th.os, "access", lambda p, mode: False)
    d = json.loads(re.search(r'type="application/json">(.*?)</script>', build_report(
        runs, tmp_path / "r.html").read_text(), re.S).group(1))
    assert len(d["thumbs"]) == N_ITEMS
    assert len(list((tmp_path / "tmp").glob("pixtral-runner-thumbs-*/*"))) == N_ITEMS
    assert not (runs[0].parent / ".cache" / "thumbs").exists() or \
        not list((runs[0].parent / ".cache" / "thumbs").iterdir())
