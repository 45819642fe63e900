"""Identity embedders: a fingerprint per image, its similarity to the reference, in a table by name.

``EMBEDDERS`` (name -> builder; ``onnx:PATH`` hands PATH to its builder):

- ``dlib``: dlib's 128-d descriptor of the largest face (loracam.data.faces); similarity = 1 - d / 0.6 with
  d the euclidean distance to the reference mean (loracam.judge.identity: 1 at d = 0, 0 at dlib's
  same-person threshold).
- ``onnx:PATH``: an ArcFace-style ONNX model. The face is aligned-ish: dlib's 68 landmarks give five points
  (eye centres, nose tip, mouth corners), moved by the least-squares similarity transform onto ArcFace's
  112x112 template (scaled to the model's input size); pixels go in as RGB (x - 127.5) / 127.5, NCHW or
  NHWC as the model's input shape says. Embeddings are L2-normalised; similarity = cosine to the mean.
- ``toy``: the toy probe's class distribution for the concept's attribute (face for sks, dress pattern for
  testdress, shoes for myshoes); similarity = its dot product with the reference's mean distribution, the
  chance that two independent readings agree. Reference photos that all read as sks make it P(sks).
- ``none``: no identity term (pets, objects, or quality-only ranking).

Every embedder compares with the mean of the reference embeddings; ``baseline`` is the reference photos'
own similarity, each against the mean of the others (leave-one-out, as identity.py does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loracam.errors import LoracamError
from loracam.judge.detect import FACECHAIN_FACE_SIZE, FoundFaces

# Measured on 200 renders per framing (tests/test_judge_rank.py keeps it honest): the locator's face box is
# 0.25-0.32 of the width in full-body shots, 0.51-0.62 in upper-body shots and 0.99-1.13 in close-ups. The
# probe tells faces apart only in the last two (P(sks) of sks dolls: 0.99+ there, 0.31 on average in full
# body), so the range keeps upper body and close-ups with a margin on either side and drops full body.
TOY_FACE_SIZE = (0.4, 1.25)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])  # 5 points in a 112x112 crop
ARCFACE_SIDE = 112


class DlibEmbedder:
    name = "dlib"
    detector = "dlib"  # finds faces for the face rules and for embedding
    face_size = FACECHAIN_FACE_SIZE
    needs_face = True

    def __init__(self, detector) -> None:
        self.analyzer = detector.analyzer

    def embed(self, images: Sequence[Image.Image], faces: Sequence[FoundFaces | None]) -> list[np.ndarray | None]:
        return [None if f is None or f.face is None else self.analyzer.embedding(im, f.face)
                for im, f in zip(images, faces)]

    def similarity(self, emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
        from loracam.judge.identity import similarity

        return similarity(np.linalg.norm(emb - ref, axis=-1))


class OnnxEmbedder:
    name = "onnx"
    detector = "dlib"
    face_size = FACECHAIN_FACE_SIZE
    needs_face = True

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a broken file
            raise LoracamError(f"{self.path} could not be loaded as an ONNX model ({exc}); give an ArcFace-style "
                               "face embedding model (.onnx)") from None
        inp = self.session.get_inputs()[0]
        self.input_name, shape = inp.name, list(inp.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise LoracamError(f"{self.path.name} takes input {inp.name} of shape {shape}; a face embedder takes "
                               "images [N, 3, H, W] or [N, H, W, 3]")
        self.nchw = shape[1] == 3
        side = shape[2] if self.nchw else shape[1]
        self.side = side if isinstance(side, int) and side > 0 else ARCFACE_SIDE
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 64  # a fixed batch is honoured

    def crop(self, image: Image.Image, face: Any) -> np.ndarray:
        """The aligned face crop, uint8 [side, side, 3]: five landmarks onto ArcFace's template."""
        lm = np.asarray(face.landmarks, np.float64)
        src = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        dst = ARCFACE_TEMPLATE * (self.side / ARCFACE_SIDE)
        fwd = similarity_transform(src, dst)  # [2, 3] image -> crop
        inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]  # PIL asks where each output pixel comes from
        out = image.convert("RGB").transform((self.side, self.side), Image.AFFINE, tuple(inv.ravel()),
                                             resample=Image.BILINEAR)
        return np.asarray(out)

    def run(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops [N, side, side, 3] -> L2-normalised embeddings [N, D]."""
        x = (crops.astype(np.float32) - 127.5) / 127.5
        if self.nchw:
            x = x.transpose(0, 3, 1, 2)
        outs = [self.session.run(None, {self.input_name: np.ascontiguousarray(x[i:i + self.batch])})[0]
                for i in range(0, len(x), self.batch)]
        emb = np.concatenate(outs).reshape(len(x), -1).astype(np.float64)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def embed(self, images: Sequence[Image.Image], faces: Sequence[FoundFaces | None]) -> list[np.ndarray | None]:
        have = [i for i, f in enumerate(faces) if f is not None and f.face is not None]
        out: list[np.ndarray | None] = [None] * len(images)
        if have:
            emb = self.run(np.stack([self.crop(images[i], faces[i].face) for i in have]))
            for k, i in enumerate(have):
                out[i] = emb[k]
        return out

    def similarity(self, emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return (emb * ref).sum(-1) / np.maximum(np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref, axis=-1), 1e-12)


class ToyEmbedder:
    name = "toy"
    detector = "toy"
    face_size = TOY_FACE_SIZE
    needs_face = False  # the probe reads the whole picture

    def __init__(self, concept: str, probe=None) -> None:
        from loracam.toy.judge import CONCEPTS

        if concept not in CONCEPTS:
            raise LoracamError(f"--identity toy judges the toy world's held-out concepts; {concept!r} is not one: "
                               f"pass --concept {' | '.join(CONCEPTS)}")
        self.concept = concept
        self.attribute, _ = CONCEPTS[concept]
        if probe is None:
            from loracam.toy.probe import Probe

            probe = Probe.load()
        self.probe = probe

    @property
    def index(self) -> int:
        from loracam.toy.probe import CLASSES

        return CLASSES[self.attribute].index(self.concept)

    def embed(self, images: Sequence[Image.Image], faces: Sequence[FoundFaces | None]) -> list[np.ndarray | None]:
        if not images:
            return []
        probs = self.probe.logits(list(images))[self.attribute].softmax(dim=1).double().numpy()  # [N, classes]
        return list(probs)

    def similarity(self, emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return (emb * ref).sum(-1)


def baseline(embedder, ref: np.ndarray) -> float | None:
    """Mean similarity of each reference embedding to the mean of the others; None with fewer than two."""
    n = len(ref)
    if n < 2:
        return None
    others = (ref.sum(axis=0) - ref) / (n - 1)  # row i: the mean of every row but i
    return float(np.mean(embedder.similarity(ref, others)))


def parse_identity(spec: str) -> tuple[str, str | None]:
    """``dlib`` | ``toy`` | ``none`` | ``onnx:PATH`` -> (name, argument); unknown names are errors."""
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in EMBEDDERS:
        raise LoracamError(f"unknown identity embedder {spec!r}; use one of: dlib, toy, onnx:PATH (an ArcFace-style "
                           "model file), none")
    if name == "onnx":
        if not arg.strip():
            raise LoracamError("--identity onnx needs the model file: write onnx:PATH/TO/model.onnx")
        path = Path(arg.strip()).expanduser()
        if not path.is_file():
            raise LoracamError(f"--identity {spec}: the ONNX model {path} does not exist; give the path of an "
                               "ArcFace-style .onnx file")
        return name, str(path)
    if sep:
        raise LoracamError(f"--identity {name} takes no argument (got {spec!r})")
    return name, None


EMBEDDER_CLASSES: dict[str, type] = {"dlib": DlibEmbedder, "onnx": OnnxEmbedder, "toy": ToyEmbedder}
# name -> builder(argument, concept, models): models is a loracam.judge.rank.Models cache; none: no identity
EMBEDDERS: dict[str, Callable[..., Any] | None] = {
    "dlib": lambda arg, concept, models: DlibEmbedder(models.detector("dlib")),
    "onnx": lambda arg, concept, models: models.get(("onnx", arg), lambda: OnnxEmbedder(Path(arg))),
    "toy": lambda arg, concept, models: ToyEmbedder(concept or "", models.probe()),
    "none": None,
}


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The [2, 3] rotation + uniform scale + shift taking points ``src`` [K, 2] closest to ``dst`` (least squares)."""
    # x' = a x - b y + tx, y' = b x + a y + ty: linear in (a, b, tx, ty)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])
