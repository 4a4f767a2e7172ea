"""The tiny model and the sample images are reproducible from code."""

from pathlib import Path

from conftest import ROOT
from runner.bundled import mistral_common_file, samples, tiny


def test_tiny_model_is_byte_identical_every_time(tmp_path: Path):
    a, b = tiny.build(tmp_path / "a"), tiny.build(tmp_path / "b")
    assert tiny.digest(a) == tiny.digest(b)
    assert sorted(p.name for p in a.iterdir()) == sorted(tiny.FILES)
    assert (a / "tekken.json").read_bytes() == mistral_common_file().read_bytes()


def test_tiny_weights_cover_the_architecture(tmp_path: Path):
    from safetensors import safe_open

    path = tiny.build(tmp_path / "m")
    with safe_open(str(path / "consolidated.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == tiny.weight_shapes()
    assert shapes["tok_embeddings.weight"] == (131072, 128)


def test_sample_images_match_their_generator(tmp_path: Path):
    for p in samples.write(tmp_path):
        assert p.read_bytes() == (ROOT / "prompts/sample/images" / p.name).read_bytes(), p.name
