"""The training data of a LoRA run, with kohya sd-scripts' semantics (interop.md §1-4).

A dataset folder (``loracam prep`` output or any kohya layout) becomes samples with captions, repeats and
buckets; each epoch is a list of batches that never mix buckets. Every random choice (batch order, flips,
caption shuffles, latent noise) is derived from the run's seed and where it happens (epoch, batch, key),
so a resumed run sees exactly the batches it would have seen, without saving any RNG state.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from loracam.data.buckets import Bucketing
from loracam.data.kohya import KohyaDataset, read_kohya
from loracam.data.steps import Item, StepPlan, balance_reg, plan_steps
from loracam.errors import LoracamError

MANIFEST = "manifest.json"  # what `loracam prep` writes next to img/ and reg/
MIN_SIDE = 8  # one latent pixel: anything smaller cannot be encoded at all


@dataclass(frozen=True)
class DataConfig:
    """How images become batches; the defaults are sd-scripts' (bucket_no_upscale on, as prep writes)."""

    resolution: tuple[int, int] = (512, 512)  # width, height: the bucket area
    bucket_no_upscale: bool = True
    min_bucket: int = 256
    max_bucket: int = 1024
    bucket_step: int = 64
    batch_size: int = 1
    shuffle_caption: bool = False
    keep_tokens: int = 0
    flip: bool = False  # horizontal flip augmentation
    caption_extensions: tuple[str, ...] = (".txt", ".caption")
    prior_loss_weight: float = 1.0  # loss weight of reg samples
    caption_dropout: float = 0.0  # sd-scripts' caption_dropout_rate: train this share unconditionally

    def __post_init__(self) -> None:
        # TOML gives lists; the rest of the code compares and hashes tuples
        object.__setattr__(self, "resolution", tuple(self.resolution))
        object.__setattr__(self, "caption_extensions", tuple(self.caption_extensions))
        problems = [f"{name} {why}" for name, why in self._problems()]
        if problems:
            raise LoracamError("invalid data settings: " + "; ".join(problems))

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if len(self.resolution) != 2 or min(self.resolution) < MIN_SIDE:
            out.append(("resolution", f"must be [width, height] of at least {MIN_SIDE} px, got {self.resolution}"))
        if self.bucket_step < 8 or self.bucket_step % 8:
            out.append(("bucket_step", f"must be a positive multiple of 8 (the VAE's factor), got {self.bucket_step}"))
        if not 0 < self.min_bucket <= self.max_bucket:
            out.append(("min_bucket", f"must be positive and at most max_bucket ({self.max_bucket})"))
        if self.batch_size < 1:
            out.append(("batch_size", f"must be at least 1, got {self.batch_size}"))
        if self.keep_tokens < 0:
            out.append(("keep_tokens", f"must be 0 or more, got {self.keep_tokens}"))
        if self.prior_loss_weight < 0:
            out.append(("prior_loss_weight", f"must be 0 or more, got {self.prior_loss_weight}"))
        if not 0.0 <= self.caption_dropout < 1.0:
            out.append(("caption_dropout", f"must be at least 0 and below 1, got {self.caption_dropout}"))
        if not self.caption_extensions:
            out.append(("caption_extensions", "must name at least one extension, e.g. .txt"))
        return out

    def bucketing(self) -> Bucketing:
        """The sd-scripts bucket settings these options describe."""
        return Bucketing(self.resolution, self.min_bucket, self.max_bucket, self.bucket_step,
                         self.bucket_no_upscale)


@dataclass
class Sample:
    """One image of the dataset, with the bucket it trains in."""

    path: Path
    caption: str  # the sidecar's first line, else the folder's class text; never shuffled here
    repeats: int  # the folder's repeats; a reg image's balanced count is in TrainData.reg_repeats
    is_reg: bool
    bucket: tuple[int, int]  # width, height
    resized: tuple[int, int]  # size before the centre crop to the bucket
    subset: str  # the subset folder's name, e.g. "10_sks woman"
    original: tuple[int, int] = (0, 0)  # the image's own size (width, height): SDXL's original-size ids

    @property
    def key(self) -> str:
        return str(self.path)


@dataclass
class Batch:
    keys: list[str]  # sample keys (path strings), for logs and tests
    pixels: torch.Tensor | None  # [B, 3, H, W] in [-1, 1] when latents are not cached
    latents: torch.Tensor | None  # [B, 4, H/8, W/8] x the VAE scaling factor when cached (or a vae was given)
    captions: list[str]  # after this batch's caption shuffle
    loss_weights: torch.Tensor  # [B] 1.0 for training images, prior_loss_weight for reg images
    flipped: list[bool]
    originals: list[tuple[int, int]] = ()  # each image's own size (width, height)
    bucket: tuple[int, int] = (0, 0)  # the batch's bucket (width, height)


class TrainData:
    """The samples of a dataset folder and the batches of every epoch, as sd-scripts would make them."""

    def __init__(self, dataset_dir: Path, cfg: DataConfig, seed: int = 0):
        root = Path(dataset_dir).resolve()
        if not root.is_dir():
            raise LoracamError(f"dataset folder not found: {root}; give the folder `loracam prep` wrote (its -o) "
                               "or a kohya dataset folder with <repeats>_<name> sub-folders")
        self.root, self.cfg, self.seed = root, cfg, seed
        kohya = read_kohya(root, cfg.caption_extensions)
        self.warnings: list[str] = list(kohya.skipped)  # folders kohya would skip too, for the CLI to show
        self.samples: list[Sample] = _read_samples(kohya, cfg.bucketing())
        self._by_key = {s.key: s for s in self.samples}
        self._items = [Item(s.key, s.bucket, s.repeats, s.is_reg) for s in self.samples]
        self.reg_repeats: dict[str, int] = balance_reg([i for i in self._items if not i.is_reg],
                                                       [i for i in self._items if i.is_reg])
        self._epoch_keys = self._keys_per_bucket()
        self._latents: dict[tuple[str, bool], torch.Tensor] = {}  # (key, flipped) -> [4, h, w] on the CPU

    # -- what an epoch holds ------------------------------------------------------------------

    def times(self, sample: Sample) -> int:
        """How often ``sample`` appears per epoch: its repeats, or a reg image's balanced count (0: unused)."""
        return self.reg_repeats.get(sample.key, 0) if sample.is_reg else sample.repeats

    def _keys_per_bucket(self) -> dict[tuple[int, int], list[str]]:
        per_bucket: dict[tuple[int, int], list[str]] = defaultdict(list)
        for s in self.samples:
            per_bucket[s.bucket] += [s.key] * self.times(s)
        # sorted so the shuffles below never depend on the order images were found in
        return {b: per_bucket[b] for b in sorted(per_bucket) if per_bucket[b]}

    def plan(self, epochs: int | None, max_steps: int, grad_accum: int = 1, processes: int = 1) -> StepPlan:
        """The run's step arithmetic (sd-scripts' count) for this dataset."""
        return plan_steps(self._items, self.cfg.batch_size, epochs, max_steps, grad_accum, processes)

    def epoch(self, epoch: int, rank: int = 0, world: int = 1) -> list[list[str]]:
        """The batches (lists of keys) of one epoch for process ``rank`` of ``world``."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} processes")
        rng = random.Random(f"{self.seed}-{epoch}")
        batches: list[list[str]] = []
        size = self.cfg.batch_size
        for keys in self._epoch_keys.values():
            keys = list(keys)
            rng.shuffle(keys)
            batches += [keys[i:i + size] for i in range(0, len(keys), size)]
        rng.shuffle(batches)
        # Every process must run the same number of steps or DDP's all-reduce waits forever: like
        # accelerate's even_batches, the epoch is topped up with its first batches to a multiple of world.
        batches += batches[: (-len(batches)) % world]
        return batches[rank::world]  # accelerate's sharding: batch i goes to process i % world

    # -- one batch ----------------------------------------------------------------------------

    def load(self, keys: list[str], epoch: int, batch_index: int, vae=None) -> Batch:
        """Pixels (or cached latents), captions, loss weights and flips of one batch."""
        samples = [self._sample(k) for k in keys]
        if len({s.bucket for s in samples}) > 1:
            raise ValueError(f"a batch must hold one bucket; got {sorted({s.bucket for s in samples})}")
        flipped = [self._flipped(epoch, batch_index, i) for i in range(len(keys))]
        captions = self._captions(samples, epoch, batch_index)
        weights = torch.tensor([self.cfg.prior_loss_weight if s.is_reg else 1.0 for s in samples])
        sizes = {"originals": [s.original for s in samples], "bucket": samples[0].bucket}
        if self._latents:
            latents = torch.stack([self._latents[(k, f)] for k, f in zip(keys, flipped)])
            return Batch(list(keys), None, latents, captions, weights, flipped, **sizes)
        pixels = torch.stack([self._pixels(_load_array(s), f) for s, f in zip(samples, flipped)])
        latents = None
        if vae is not None:  # not cached: fresh noise each time, like sd-scripts without --cache_latents
            gens = [_generator(f"{self.seed}-{epoch}-{batch_index}-{i}-latent") for i in range(len(keys))]
            with torch.no_grad():
                latents = encode(vae, pixels.to(vae.device, vae.dtype), gens)
        return Batch(list(keys), pixels, latents, captions, weights, flipped, **sizes)

    def _sample(self, key: str) -> Sample:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"{key} is not a sample of {self.root}") from None

    def _flipped(self, epoch: int, batch_index: int, position: int) -> bool:
        if not self.cfg.flip:
            return False
        return random.Random(f"{self.seed}-{epoch}-{batch_index}-{position}-flip").random() < 0.5

    def fixed_captions(self) -> list[str] | None:
        """Every caption a batch can carry, in sample order (with "" when captions are dropped), or None when
        shuffled captions make them new each epoch."""
        if self.cfg.shuffle_caption:
            return None
        found = [s.caption for s in self.samples] + ([""] if self.cfg.caption_dropout else [])
        return list(dict.fromkeys(found))

    def _captions(self, samples: list[Sample], epoch: int, batch_index: int) -> list[str]:
        captions = [s.caption for s in samples]
        if self.cfg.shuffle_caption:
            rng = random.Random(f"{self.seed}-{epoch}-{batch_index}-caption")
            captions = [shuffle_caption(c, self.cfg.keep_tokens, rng) for c in captions]
        if self.cfg.caption_dropout:
            # the empty caption teaches the unconditional prediction classifier-free guidance needs
            drop = random.Random(f"{self.seed}-{epoch}-{batch_index}-dropout")
            captions = ["" if drop.random() < self.cfg.caption_dropout else c for c in captions]
        return captions

    @staticmethod
    def _pixels(array: np.ndarray, flipped: bool) -> torch.Tensor:
        """[H, W, 3] uint8 -> [3, H, W] in [-1, 1] (sd-scripts' ToTensor + Normalize(0.5, 0.5))."""
        if flipped:
            array = array[:, ::-1]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0

    # -- latents ------------------------------------------------------------------------------

    def latent_generator(self, key: str, flipped: bool) -> torch.Generator:
        """The noise source of a sample's cached latent: from the seed and its path inside the dataset."""
        rel = self._sample(key).path.relative_to(self.root).as_posix()
        return _generator(f"{self.seed}-{rel}-{int(flipped)}")

    def cache_latents(self, vae, device, dtype, batch_size: int = 4) -> None:
        """Encode every used sample once (and its mirror with flip) and keep the latents on the CPU."""
        variants = (False, True) if self.cfg.flip else (False,)
        per_call = max(1, batch_size // len(variants))
        cache: dict[tuple[str, bool], torch.Tensor] = {}
        with torch.no_grad():
            for keys in self._distinct_keys_per_bucket():
                for start in range(0, len(keys), per_call):
                    jobs = [(k, f) for k in keys[start:start + per_call] for f in variants]
                    arrays = {k: _load_array(self._by_key[k]) for k, _ in jobs}
                    pixels = torch.stack([self._pixels(arrays[k], f) for k, f in jobs])
                    latents = encode(vae, pixels.to(device, dtype), [self.latent_generator(k, f) for k, f in jobs])
                    cache.update(zip(jobs, latents.cpu()))
        self._latents = cache  # all or nothing: a failure above leaves the data uncached, not half cached

    @property
    def latents_cached(self) -> bool:
        """Whether load() returns cached latents instead of pixels."""
        return bool(self._latents)

    def _distinct_keys_per_bucket(self) -> list[list[str]]:
        return [list(dict.fromkeys(keys)) for keys in self._epoch_keys.values()]

    # -- facts for metadata and the identity check --------------------------------------------

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per subset folder, how many images' captions hold each tag."""
        freq: dict[str, dict[str, int]] = {}
        for s in self.samples:
            tags = freq.setdefault(s.subset, {})
            for tag in s.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    tags[tag] = tags.get(tag, 0) + 1
        return freq

    def counts(self) -> dict:
        """Image and sample counts for logs and the LoRA's metadata."""
        train = [s for s in self.samples if not s.is_reg]
        reg = [s for s in self.samples if s.is_reg]
        dirs: dict[str, dict[str, int]] = {}
        for s in self.samples:
            d = dirs.setdefault(s.subset, {"n_repeats": s.repeats, "img_count": 0})
            d["img_count"] += 1
        return {
            "num_train_images": len(train),  # distinct files
            "num_reg_images": len(self.reg_repeats),  # distinct reg files actually used
            "num_reg_images_unused": len(reg) - len(self.reg_repeats),
            "train_samples_per_epoch": sum(s.repeats for s in train),
            "reg_samples_per_epoch": sum(self.reg_repeats.values()),
            "batches_per_epoch": sum(-(-len(k) // self.cfg.batch_size) for k in self._epoch_keys.values()),
            "buckets": {f"{w}x{h}": len(k) for (w, h), k in self._epoch_keys.items()},
            "dataset_dirs": dirs,  # the shape of sd-scripts' ss_dataset_dirs
            # sd-scripts writes these as ss_num_train_images / ss_num_reg_images: images x folder repeats,
            # reg before balancing; kept apart so metadata can match it if wanted
            "kohya_num_train_images": sum(s.repeats for s in train),
            "kohya_num_reg_images": sum(s.repeats for s in reg),
        }

    def reference_embeddings(self) -> np.ndarray | None:
        """[N, 128] face embeddings of the photos prep kept (manifest.json), or None without them."""
        path = self.root / MANIFEST
        if not path.is_file():
            return None
        try:
            photos = json.loads(path.read_text(encoding="utf-8")).get("photos", [])
        except (ValueError, AttributeError) as e:
            raise LoracamError(f"{path} is not a loracam manifest ({e}); run `loracam prep` again") from None
        embs = [p["embedding"] for p in photos if p.get("status") == "kept" and p.get("embedding")]
        if not embs:
            return None
        if len({len(e) for e in embs}) > 1:
            raise LoracamError(f"{path} holds face embeddings of different lengths; run `loracam prep` again")
        return np.asarray(embs, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# helpers


def shuffle_caption(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """sd-scripts' shuffle_caption: comma-separated tags, the first ``keep_tokens`` stay in front."""
    tags = [t.strip() for t in caption.strip().split(",")]
    fixed, flexible = tags[:keep_tokens], [t for t in tags[keep_tokens:] if t]
    rng.shuffle(flexible)
    return ", ".join(fixed + flexible)


def encode(vae, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 4, H/8, W/8]: sampled from the latent distribution (as sd-scripts), scaled."""
    # one generator per image, so a sample's latent does not depend on what it was batched with
    return vae.encode(pixels).latent_dist.sample(generator=generators) * vae.config.scaling_factor


def _generator(text: str) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator("cpu").manual_seed(seed)  # CPU: the same noise on every device


def _read_samples(kohya: KohyaDataset, bucketing: Bucketing) -> list[Sample]:
    samples, problems = [], []
    for subset in kohya.subsets:
        for image in subset.images:
            size, problem = _image_size(image.path)
            if problem is None:
                bucket, resized = bucketing.select(*size)
                problem = _too_small(size, bucket, bucketing)
            if problem:
                problems.append(f"  {image.path.relative_to(kohya.root)}: {problem}")
                continue
            samples.append(Sample(image.path, subset.caption_of(image), subset.repeats, subset.is_reg,
                                  bucket, resized, subset.dir.name, size))
    if problems:  # all of them at once, so one pass fixes the folder
        raise LoracamError(f"{len(problems)} image(s) in {kohya.root} cannot be trained on; remove or replace "
                           "them (or re-run `loracam prep`):\n" + "\n".join(problems))
    return samples


def _image_size(path: Path) -> tuple[tuple[int, int], str | None]:
    """The image's stored size (sd-scripts ignores EXIF rotation too), or why it cannot be read."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # catches truncated and damaged PNGs without decoding them
        return size, None
    except Exception as e:  # PIL raises many types for damaged files
        return (0, 0), f"unreadable image ({type(e).__name__}: {e})"


def _too_small(size: tuple[int, int], bucket: tuple[int, int], bucketing: Bucketing) -> str | None:
    if min(size) < MIN_SIDE:
        return f"{size[0]}x{size[1]} px, smaller than {MIN_SIDE} px a side"
    if min(bucket) < MIN_SIDE:  # bucket_no_upscale cuts each side to the step, which can leave nothing
        return (f"{size[0]}x{size[1]} px is under the {bucketing.step} px bucket step with bucket_no_upscale; "
                "use a larger image or turn bucket_no_upscale off")
    return None


def _load_array(sample: Sample) -> np.ndarray:
    """The sample as [bucket h, bucket w, 3] uint8: RGB, INTER_AREA resize, centre crop (sd-scripts)."""
    try:
        with Image.open(sample.path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise LoracamError(f"cannot read {sample.path} ({type(e).__name__}: {e}); remove or replace it") from None
    if (array.shape[1], array.shape[0]) != sample.resized:
        array = cv2.resize(array, sample.resized, interpolation=cv2.INTER_AREA)
    return center_crop(array, sample.bucket)


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Trim [H, W, C] to ``size`` (width, height), the odd pixel going to the right/bottom as sd-scripts."""
    height, width = array.shape[:2]
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    return array[top:top + size[1], left:left + size[0]]


__all__ = ["Batch", "DataConfig", "Sample", "TrainData", "center_crop", "encode", "shuffle_caption"]
