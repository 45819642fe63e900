"""The attribute probe: a small CNN that reads a toy-world image back into its attributes.

It is the judge of every quality number in the toy world (prompt following, LoRA fidelity, placement,
prior preservation), so it is trained on augmented renders (blur, noise, colour and position jitter,
like a generated image's imperfections) and must reach at least 98% per attribute on fresh renders.

Heads (an attribute that an image does not show is not scored: shoes outside full-body shots, faces in
full-body shots, the dress in close-ups):
- framing, dress colour, dress pattern (``testdress`` included), shoes (``myshoes`` included), hair colour,
  hair style, face identity (``sks`` included), background colour;
- ``spill``: whether the dress fabric appears outside the dress (on the background), i.e. whether the
  garment pattern is where a garment is. This is the "placement" check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loracam.toy import world
from loracam.toy.world import H, MYSHOES, SKS, TESTDRESS, W, Doll

PROBE_PATH = Path(__file__).resolve().parent / "probe.safetensors"

# attribute -> its classes, in head order
CLASSES: dict[str, tuple[str, ...]] = {
    "framing": world.FRAMINGS,
    "dress": world.DRESS_COLOURS,
    "pattern": tuple(world.PATTERNS) + (TESTDRESS,),
    "shoes": world.SHOE_COLOURS + (MYSHOES,),
    "hair": world.HAIR_COLOURS,
    "hair_style": world.HAIR_STYLES,
    "face": world.BASE_FACES + (SKS,),
    "background": world.BACKGROUNDS,
    "spill": ("no", "yes"),
}


def labels(doll: Doll, spill: bool = False) -> dict[str, str | None]:
    """What the probe should read from a render of ``doll``; None where the image does not show it."""
    return {
        "framing": doll.framing,
        "dress": doll.dress if doll.shows_dress and doll.dress != TESTDRESS else None,
        "pattern": (TESTDRESS if doll.dress == TESTDRESS else doll.pattern) if doll.shows_dress else None,
        "shoes": doll.shoes if doll.shows_shoes else None,
        "hair": doll.hair,
        "hair_style": doll.hair_style,
        "face": doll.face if doll.shows_face else None,
        "background": None if spill else doll.background,  # the spilled fabric covers it
        "spill": "yes" if spill else "no",
    }


class ProbeNet(nn.Module):
    """Five conv stages (64x96 -> 2x3) and one linear head per attribute on avg+max pooled features.

    The first stage already strides: full-resolution convolutions cost most and the details that matter
    (eyes, dots) are still two or more pixels wide at 64x96."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, width, 2 * width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({a: nn.Linear(8 * width, len(c)) for a, c in CLASSES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {a: head(pooled) for a, head in self.heads.items()}


# ---------------------------------------------------------------------------------------------
# reading images


def load_net(net: nn.Module, path: Path, what: str, rebuild: str) -> nn.Module:
    """A shipped toy network's weights into ``net``, in eval mode; a clear error where the file is missing."""
    from safetensors.torch import load_file

    from loracam.errors import LoracamError

    if not path.is_file():
        raise LoracamError(f"{what} is missing ({path}); build it with `{rebuild}`")
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@dataclass
class Probe:
    net: ProbeNet

    @classmethod
    def load(cls, path: Path = PROBE_PATH) -> "Probe":
        return cls(load_net(ProbeNet(), path, "the toy probe", "make toy-probe"))

    def logits(self, images) -> dict[str, torch.Tensor]:
        x = to_tensor(images)
        with torch.no_grad():
            outs = [self.net(x[i:i + 256]) for i in range(0, len(x), 256)]
        return {a: torch.cat([o[a] for o in outs]) for a in CLASSES}

    def read(self, images) -> list[dict[str, str]]:
        """Every attribute of every image, as class names (unshown parts get a guess: ignore them)."""
        logits = self.logits(images)
        idx = {a: v.argmax(dim=1).tolist() for a, v in logits.items()}
        n = len(next(iter(idx.values())))
        return [{a: CLASSES[a][idx[a][i]] for a in CLASSES} for i in range(n)]


def to_tensor(images) -> torch.Tensor:
    """uint8 arrays [N, H, W, 3] (or a list of arrays / PIL images) -> float [N, 3, 96, 64] in [-1, 1]."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        arrays = images
    else:
        arrays = np.stack([np.asarray(im.convert("RGB").resize((W, H), Image.BICUBIC)) if isinstance(im, Image.Image)
                           else np.asarray(im) for im in images])
    if arrays.shape[1:3] != (H, W):
        arrays = np.stack([np.asarray(Image.fromarray(a).resize((W, H), Image.BICUBIC)) for a in arrays])
    return torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def accuracy(reads: list[dict[str, str]], truths: list[dict[str, str | None]]) -> dict[str, float]:
    """Per attribute, the share of images (that show it) read correctly."""
    out = {}
    for a in CLASSES:
        pairs = [(r[a], t[a]) for r, t in zip(reads, truths) if t[a] is not None]
        out[a] = sum(r == t for r, t in pairs) / len(pairs) if pairs else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# training


def random_doll(rng: np.random.Generator) -> tuple[Doll, bool]:
    """A training doll: the base world with held-out concepts mixed in, and sometimes a spilled dress."""
    doll = world.sample_doll(rng)
    extra = {}
    if rng.random() < 0.2:
        extra["dress"] = TESTDRESS
    if rng.random() < 0.15:
        extra["shoes"] = MYSHOES
    if rng.random() < 0.15:
        extra["face"] = SKS
    return replace(doll, **extra), bool(rng.random() < 0.15 and doll.framing != "close-up")


def render_set(n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    images, truths = [], []
    for _ in range(n):
        doll, spill = random_doll(rng)
        images.append(world.render(doll, spill=spill))
        truths.append(labels(doll, spill))
    return np.stack(images), truths


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What generated images do to renders: blur, noise, slight colour cast and shifts of a pixel or two."""
    n, c, h, w = x.shape
    sigma = torch.rand(n, generator=g) * 1.2
    k = torch.arange(-2, 3, dtype=torch.float32)
    kern = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # one Gaussian per image
    flat = nn.functional.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    flat = nn.functional.conv2d(flat, kern[:, None, None, :], groups=n * c)  # along x
    x = nn.functional.conv2d(flat, kern[:, None, :, None], groups=n * c).reshape(n, c, h, w)  # along y
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) * 0.08)
    x = x * (1 + (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.1) + (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.1
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3)).clamp(-1, 1)


def _targets(truths: list[dict]) -> dict[str, torch.Tensor]:
    """Class indices per attribute, -100 (ignored by cross-entropy) where the image does not show it."""
    return {a: torch.tensor([c.index(t[a]) if t[a] is not None else -100 for t in truths]) for a, c in CLASSES.items()}


def train(pool: int = 30000, steps: int = 3000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
          init: ProbeNet | None = None, echo=print) -> ProbeNet:
    """Train (or, from ``init``, continue training) the probe on ``pool`` augmented renders."""
    torch.manual_seed(seed)
    t = time.time()
    images, truths = render_set(pool, seed)
    echo(f"rendered {pool} training images in {time.time() - t:.0f} s")
    x_all = to_tensor(images)
    y_all = _targets(truths)
    net = init if init is not None else ProbeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, pool, (batch,), generator=g)
        out = net(augment(x_all[idx], g))
        loss = sum(nn.functional.cross_entropy(out[a], y_all[a][idx], ignore_index=-100) for a in CLASSES
                   if (y_all[a][idx] != -100).any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            echo(f"probe step {step}/{steps}: loss {loss.item():.4f}")
    return net.eval()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] (any device or dtype) -> uint8 arrays [N, H, W, 3]: to_tensor's inverse."""
    return ((x.detach().float().cpu().permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def evaluate(probe: Probe, n: int = 2000, seed: int = 12345, augmented: bool = False) -> dict[str, float]:
    """Per-attribute accuracy on ``n`` fresh renders (a seed the training never used)."""
    images, truths = render_set(n, seed)
    if augmented:
        x = augment(to_tensor(images), torch.Generator().manual_seed(seed))
        images = to_uint8(x)
    return accuracy(probe.read(images), truths)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(prog="python -m loracam.toy.probe", description="Train the toy attribute probe.")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, help="continue from these weights (a second, lower-LR round)")
    ap.add_argument("-o", "--output", type=Path, default=PROBE_PATH)
    args = ap.parse_args(argv)
    t = time.time()
    init = Probe.load(args.init).net.train() if args.init else None
    net = train(pool=args.pool, steps=args.steps, lr=args.lr, seed=args.seed, init=init)
    took = time.time() - t
    tmp = args.output.with_name(args.output.name + ".partial")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(args.output)
    acc = evaluate(Probe(net))
    print(json.dumps({"train_seconds": round(took), "accuracy": {a: round(v, 4) for a, v in acc.items()}}, indent=1))
    return 0 if min(acc.values()) >= 0.98 else 1


if __name__ == "__main__":
    raise SystemExit(main())
