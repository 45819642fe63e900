"""`loracam demo` runs end to end and says plainly what its images are."""

from __future__ import annotations

from PIL import Image

from loracam.models import ModelCache
from loracam.studio.demo import run_demo


def test_demo_renders_and_explains(tmp_path, tiny):
    models = ModelCache()
    models._models[("random", "random:tiny", "cpu", tiny.dtype)] = tiny
    said: list[str] = []
    paths = run_demo(tmp_path / "demo", models, echo=said.append)
    assert len(paths) == 8 and all(p.exists() for p in paths)
    assert "UNTRAINED" in " ".join(said)
    infos = [Image.open(p).info["parameters"] for p in paths]
    assert sum("Lora hashes: \"demo_style: " in i for i in infos) == 4
    # running it again adds images and never overwrites the first run's
    more = run_demo(tmp_path / "demo", models, echo=said.append)
    assert len(set(paths) | set(more)) == 16
