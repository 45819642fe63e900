"""The toy world's part locator: where a doll's face, garment and shoes are, for detail passes.

mediapipe finds people, not paper dolls, so the toy world brings its own detector: a small CNN that reads a
64x96 image and gives, per part, a confidence and a box. It is trained on renders whose boxes the renderer
knows (half of them after a round trip through the toy base's VAE, which is what generated images look like),
every framing, held-out concepts included; a part counts as present when at least 40% of its box is in the
frame. Shipped as ``locator.safetensors``; rebuilt by ``make toy-locator`` (``python -m loracam.toy.locator``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

LOCATOR_PATH = Path(__file__).resolve().parent / "locator.safetensors"
PARTS = ("face", "garment", "shoes")
MIN_VISIBLE = 0.4
W, H = 64, 96


class LocatorNet(nn.Module):
    """[B, 3, 96, 64] in [0, 1] -> [B, parts, 5]: a presence logit and a box (centre x, y, width, height in
    image fractions, through a sigmoid)."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = [3, width, width, 2 * width, 2 * width, 2 * width]
        layers = []
        for i in range(5):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.BatchNorm2d(c[i + 1]),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)  # 96x64 -> 6x4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c[-1] * 6 * 4, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, len(PARTS) * 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x - 0.5)).view(-1, len(PARTS), 5)


def targets(dolls, size: tuple[int, int] = (W, H)) -> tuple[np.ndarray, np.ndarray]:
    """(present [n, parts], boxes [n, parts, 4] as centre x, y, width, height fractions) from the renderer."""
    from loracam.toy import world

    present = np.zeros((len(dolls), len(PARTS)), np.float32)
    boxes = np.zeros((len(dolls), len(PARTS), 4), np.float32)
    for i, d in enumerate(dolls):
        found = world.boxes(d, size, min_visible=MIN_VISIBLE)
        for j, part in enumerate(PARTS):
            if part in found and _shows(d, part):
                x0, y0, x1, y1 = found[part]
                present[i, j] = 1
                boxes[i, j] = [(x0 + x1) / 2 / size[0], (y0 + y1) / 2 / size[1], (x1 - x0) / size[0], (y1 - y0) / size[1]]
    return present, boxes


def _shows(doll, part: str) -> bool:
    """A part is there to find when the framing draws it (shoes only in full-body shots)."""
    return {"face": True, "garment": doll.shows_dress, "shoes": doll.shows_shoes}[part]


def as_corners(box: torch.Tensor, size: tuple[int, int] = (W, H)) -> torch.Tensor:
    """[.., 4] centre/size fractions -> pixel corners x0, y0, x1, y1."""
    cx, cy, bw, bh = box.unbind(-1)
    return torch.stack([(cx - bw / 2) * size[0], (cy - bh / 2) * size[1], (cx + bw / 2) * size[0],
                        (cy + bh / 2) * size[1]], dim=-1)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes [.., 4]."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


class Locator:
    """The shipped locator, ready to read images."""

    def __init__(self, net: LocatorNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path = LOCATOR_PATH) -> "Locator":
        from loracam.toy.probe import load_net

        return cls(load_net(LocatorNet(), path, "the toy locator", "make toy-locator"))

    def predict(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence [n, parts], corner boxes [n, parts, 4] in the images' pixels) for uint8 [n, h, w, 3]."""
        n, h, w = images.shape[:3]
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        if (w, h) != (W, H):
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            out = torch.cat([self.net(x[i:i + 256]) for i in range(0, n, 256)])
        return out[..., 0].sigmoid(), as_corners(out[..., 1:].sigmoid(), (w, h))

    def locate(self, image: Image.Image) -> dict[str, tuple[tuple[float, float, float, float], float]]:
        """Per part: its box in the image's pixels and the confidence that it is there."""
        conf, boxes = self.predict(np.array(image.convert("RGB"))[None])  # a writable copy for torch
        return {p: (tuple(float(v) for v in boxes[0, j]), float(conf[0, j])) for j, p in enumerate(PARTS)}


# ---------------------------------------------------------------------------------------------
# training


def make_data(n: int, seed: int, model=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from loracam.toy import world

    rng = np.random.default_rng(seed)
    dolls = [world.sample_mixed_doll(rng) for _ in range(n)]
    images = np.stack([world.render(d) for d in dolls])
    if model is not None:
        from loracam.toy import judge

        images[1::2] = judge.round_trip(model, images[1::2])
    present, boxes = targets(dolls)
    return images, present, boxes


def train(steps: int, pool: int, batch: int, lr: float, seed: int) -> LocatorNet:
    from loracam.models import ModelCache

    torch.manual_seed(seed)
    toy = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    images, present, boxes = make_data(pool, seed, toy)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    p_all, b_all = torch.from_numpy(present), torch.from_numpy(boxes)
    net = LocatorNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch,), generator=g)
        x, p, b = x_all[idx], p_all[idx], b_all[idx]
        flip = torch.rand(batch, generator=g) < 0.5  # mirrored dolls: the box's centre mirrors too
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        b = b.clone()
        b[..., 0] = torch.where(flip[:, None], 1 - b[..., 0], b[..., 0])
        out = net(x)
        cls_loss = F.binary_cross_entropy_with_logits(out[..., 0], p)
        pred = out[..., 1:].sigmoid()
        mask = p.bool()
        box_loss = F.l1_loss(pred[mask], b[mask]) + (1 - iou(as_corners(pred[mask]), as_corners(b[mask]))).mean()
        loss = cls_loss + box_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            print(f"step {step}/{steps}  presence {cls_loss.item():.4f}  box {box_loss.item():.4f}  "
                  f"{time.time() - t0:.0f} s", flush=True)
    return net.eval()


def evaluate(locator: Locator, n: int = 500, seed: int = 777, model=None) -> dict:
    """Per part on fresh renders: mean box IoU where it is present, and presence accuracy at 0.5."""
    images, present, boxes = make_data(n, seed, model)
    conf, pred = locator.predict(images)
    truth = as_corners(torch.from_numpy(boxes))
    out = {}
    for j, part in enumerate(PARTS):
        there = torch.from_numpy(present[:, j]).bool()
        out[part] = {"iou": round(float(iou(pred[there, j], truth[there, j]).mean()), 3),
                     "presence_accuracy": round(float(((conf[:, j] >= 0.5) == there).float().mean()), 3),
                     "present": int(there.sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    from loracam.io import atomic_write
    from loracam.models import ModelCache

    ap = argparse.ArgumentParser(prog="python -m loracam.toy.locator", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pool", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=LOCATOR_PATH)
    args = ap.parse_args(argv)
    net = train(args.steps, args.pool, args.batch, args.lr, args.seed)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(args.output, lambda tmp: save_file(state, tmp), overwrite=True)
    toy = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    print("fresh renders:", evaluate(Locator(net)))
    print("fresh renders through the toy VAE:", evaluate(Locator(net), seed=778, model=toy))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
