"""Process-wide state is set for a scope and restored: engine.env for the engine's life (a
sweep point's env must not leak into the next), Pillow's pixel limit for one plan. The engine
here is a test double: what is checked is the slot's bookkeeping, not vLLM."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from runner.engine import EngineSlot
from runner.errors import StartFailed
from runner.plan.images import ImageOptions
from runner.plan.load import load_set

VAR, OTHER = "PIXTRAL_RUNNER_TEST_ENV", "PIXTRAL_RUNNER_TEST_OTHER"


def fake_engine(seen: list[dict]):
    def start(kw: dict) -> SimpleNamespace:
        seen.append({VAR: os.environ.get(VAR), OTHER: os.environ.get(OTHER)})
        return SimpleNamespace(shutdown=lambda: None)
    return start


def test_engine_env_lives_with_the_engine_and_is_restored(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.setenv(OTHER, "before")
    seen: list[dict] = []
    slot = EngineSlot(start=fake_engine(seen))

    a, _, reused = slot.get({"model": "a"}, {VAR: "1", OTHER: "point-1"})
    assert not reused and seen[-1] == {VAR: "1", OTHER: "point-1"}
    assert slot.get({"model": "a"}, {VAR: "1", OTHER: "point-1"})[0] is a  # reused, env kept
    assert os.environ[VAR] == "1"

    # the next sweep point: other engine arguments and no env: nothing of point 1 is left
    _, _, reused = slot.get({"model": "b"}, {})
    assert not reused and seen[-1] == {VAR: None, OTHER: "before"}
    assert VAR not in os.environ and os.environ[OTHER] == "before"

    slot.get({"model": "b"}, {VAR: "2"})  # the same arguments with another env: a new engine
    assert slot.starts == 3 and os.environ[VAR] == "2"
    slot.shutdown()
    assert VAR not in os.environ and os.environ[OTHER] == "before"


def test_a_failed_engine_start_restores_the_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(VAR, raising=False)

    def broken(kw: dict) -> None:
        assert os.environ[VAR] == "1"
        raise RuntimeError("no engine")

    with pytest.raises(StartFailed, match=r"failed to start \(RuntimeError: no engine\)"):
        EngineSlot(start=broken).get({"model": "a"}, {VAR: "1"})
    assert VAR not in os.environ


def test_pillow_pixel_limit_is_raised_for_the_plan_only(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    """With Pillow's own limit below the image (8x8 = 64 pixels > 2 x 16: Pillow refuses it),
    the plan still reads it under prompts.max_image_pixels=100 (raised), and Pillow's limit is
    16 again afterwards (for the plan only)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "set.yaml").write_text("items:\n  - {id: a, text: hi, images: [a.png]}\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)
    with pytest.raises(Image.DecompressionBombError):  # the control: Pillow alone refuses it
        Image.open(tmp_path / "a.png")
    plan = load_set(str(tmp_path / "set.yaml"), tmp_path,
                    images=ImageOptions(max_image_pixels=100))
    assert plan.items[0].error is None
    assert Image.MAX_IMAGE_PIXELS == 16


def test_gc_paused_freezes_nothing_and_restores_the_collector_across_threads():
    import gc
    import threading

    from runner.files import gc_paused

    frozen, inside, leave = gc.get_freeze_count(), threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            leave.wait(10)

    assert gc.isenabled()
    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        assert inside.wait(10) and not gc.isenabled()
    assert not gc.isenabled()  # the other thread's block is still open
    leave.set()
    t.join(10)
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_a_stopped_start_kills_only_the_processes_it_made():
    """abort_start (the plan failed while an engine started beside it) kills the children the
    start made, not a child that was there before it (an engine core still shutting down)."""
    import subprocess
    import threading

    from runner.engine.slot import EngineSlot, children

    old = subprocess.Popen(["sleep", "60"])
    started, spare = threading.Event(), children()
    new = subprocess.Popen(["sleep", "60"])  # what the start made
    t = threading.Thread(target=EngineSlot.abort_start, args=(started, spare))
    t.start()
    try:
        assert new.wait(30) == -9  # killed (waited for: a real exit status, not a timer)
        assert old.poll() is None
    finally:
        started.set()
        t.join()
        old.kill()
        old.wait()
