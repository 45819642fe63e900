"""Shared fixtures: no network, a private LORACAM_HOME, the tiny model and the real SD1.5 tokenizer."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

import loracam  # noqa: F401  before torch: it sets MKL's reproducibility mode, which MKL reads once (loracam.numerics)
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# LORACAM_TEST_THREADS=1 when another process keeps a core busy: two threads that wait on a taken core spin
# and run ~100x slower (measured: a 0.2 s tiny render took 27 s next to a training process)
# and one thread in each pytest-xdist process (`make test` runs two: each keeps one core busy), and so in every
# process a test starts (the CLI, the web server, workers): two threads there beside the other test process
# made the demo test 5x slower (189 s against 36 s)
_xdist = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
if _xdist and int(_xdist) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ.get("LORACAM_TEST_THREADS", 0))
                      or max(1, min(2, (os.cpu_count() or 1) // (int(_xdist) if _xdist else 1))))

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    """Tests may talk to loopback only; any other address is a bug in the test or the code."""
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise RuntimeError(f"test tried to reach the network: {address}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORACAM_HOME", str(tmp_path / "loracam-home"))


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import CLIPTokenizer

    from loracam.models import SD15_DIR

    return CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer")


@pytest.fixture(scope="session")
def tiny():
    """The random:tiny base on the CPU in fp32, shared by tests that only read it."""
    from loracam.models import ModelCache

    return ModelCache().get("random:tiny", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_sdxl():
    """The random:tiny-sdxl base on the CPU in fp32 (SDXL's structure at small widths), shared like ``tiny``."""
    from loracam.models import ModelCache

    return ModelCache().get("random:tiny-sdxl", torch.device("cpu"), torch.float32)


@pytest.fixture()
def models(tiny):
    """A fresh ModelCache that answers random:tiny with the session's model (nothing else is cached)."""
    from loracam.models import ModelCache

    mc = ModelCache()
    mc._models[("random", "random:tiny", "cpu", torch.float32)] = tiny
    return mc


@pytest.fixture(scope="session")
def analyzer():
    """dlib's face models, loaded once for every test that needs them."""
    from loracam.data.faces import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="session")
def astronaut():
    """skimage's astronaut: a real portrait with one face (and a mission patch HOG likes)."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="session")
def hopper():
    """matplotlib's Grace Hopper portrait: a second, different person."""
    import matplotlib
    from PIL import Image

    return Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB")


# The slowest files first: pytest-xdist hands out whole files in collection order, and the file that starts last
# decides when the suite ends (alphabetical order put test_web*.py and test_workers.py, ~230 s together, at the
# end, with one process finishing them while the other sat idle).
SLOW_FIRST = ("test_workers.py", "test_web.py", "test_toy_model.py", "test_web_browser.py", "test_studio_job.py",
              "test_train.py", "test_tune.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the others keep their order
