"""The toy world's face analyser for ``prep --subject face --face-model toy``: dlib finds no paper-doll faces.

It answers prep with FaceAnalyzer's interface (find, align, crops, embedding), so the toy studio prepares a
face dataset exactly the way a user's photos are prepared: one face per photo, a close-up crop around it,
an identity embedding per photo (outliers flagged "may be someone else"). The parts:
- the face box is the toy locator's;
- dolls are drawn upright, so there is no roll to level (the landmarks are the box centre: roll 0);
- the close-up frames the head box at HEAD_FRACTION of the crop's height, the toy base's own close-up
  composition (a head-and-shoulders crop would be captioned "close-up" while showing an upper body);
- the embedding is the probe's face-identity distribution on that close-up: two photos of one doll are
  ~0 apart, two dolls ~1.4 (the distance of two one-hot vectors), so prep's 0.6 outlier threshold keeps
  its meaning.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from loracam.data.faces import Face, FaceFinding
from loracam.data.geometry import Box, aspect_crop

HEAD_FRACTION = 0.68  # the head box's share of a toy close-up's height (the renderer's close-up camera)
MIN_CONFIDENCE = 0.5  # the locator's presence score below which no face is reported
CROP_SIZE = (64, 96)  # the toy base's size: what the probe reads


class ToyFaceAnalyzer:
    """Faces of toy dolls, by the toy locator and probe (loaded on first use)."""

    closeup_fraction = HEAD_FRACTION

    def __init__(self, min_face_px: int = 16):
        self.min_face_px = min_face_px
        self._locator = self._probe = None

    @property
    def locator(self):
        if self._locator is None:
            from loracam.toy.locator import Locator

            self._locator = Locator.load()
        return self._locator

    @property
    def probe(self):
        if self._probe is None:
            from loracam.toy.probe import Probe

            self._probe = Probe.load()
        return self._probe

    def find(self, image: Image.Image) -> FaceFinding:
        (x0, y0, x1, y1), conf = self.locator.locate(image)["face"]
        if conf < MIN_CONFIDENCE:
            return FaceFinding(None, "no face found (the toy locator sees none)", 0)
        box = Box(x0, y0, x1, y1)
        if box.height < self.min_face_px:
            return FaceFinding(None, f"face too small: {round(box.height)} px", 1)
        centre = np.array([[(x0 + x1) / 2, (y0 + y1) / 2]])
        return FaceFinding(Face(box, conf, np.repeat(centre, 68, axis=0)), None, 1)

    def align(self, image: Image.Image, face: Face, window: float | None = None) -> tuple[Image.Image, Face]:
        return image, face  # upright already

    def crops(self, image: Image.Image, face: Face, aspect: float) -> dict[str, tuple[Image.Image, Box]]:
        cx, cy = face.box.center
        h = face.box.height / HEAD_FRACTION
        return {"closeup": aspect_crop(image, Box(cx - h * aspect / 2, cy - h / 2, cx + h * aspect / 2, cy + h / 2),
                                       aspect)}

    def embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        crop, _ = self.crops(image, face, CROP_SIZE[0] / CROP_SIZE[1])["closeup"]
        return self.identity(crop)

    def identity(self, crop: Image.Image) -> np.ndarray:
        """The probe's face-identity distribution of a close-up (float64 [identities])."""
        import torch

        x = np.array(crop.convert("RGB").resize(CROP_SIZE, Image.LANCZOS))[None]  # writable: torch reads it
        logits = self.probe.logits(x)["face"]
        return torch.softmax(logits.float(), dim=-1)[0].double().numpy()
