"""Teach the toy base partial and shuffled prompts: ``python -m loracam.toy.prompts`` (a build stage).

The toy base (build.py) learned its world from full tag lists in one fixed order and binds colours by where
a tag stands: "1girl, full body, green dress, yellow background" drew a green background and yellow shoes
(the colour after the dress is the shoes' in a full list). Users' prompts and style presets leave tags out
and reorder them.

The fix is in the text encoder alone. The U-Net, the VAE and the tokenizer stay bit-identical: LoRAs, the toy
ControlNet and every file trained on the base read the U-Net's features. The encoder learns to hand the
U-Net, for a partial or reordered prompt, what it already understands:
- data: base-world renders (``world.sample_doll``, no held-out concept), encoded once by the frozen VAE;
  captions drawn afresh at every step from the doll's tags: sd-scripts' ``caption_tag_dropout_rate`` and
  ``shuffle_caption``, plus full lists in order (what the base was trained on) and empty ones (CFG's
  unconditional row is encoded from "");
- target: what the doll's FULL tag list, in order, through the shipped encoder makes the frozen U-Net's
  cross-attention layers read, on noisy latents of the base's own schedule (``attention_loss``), where the
  caption names the part; the U-Net's own objective (v-prediction MSE, ``--loss v``) moved the shuffled
  prompts' dress colour by nothing in 400 steps (45% -> 45%), the prompt deciding a few percent of it;
- ``embedding_loss``: full lists and "" keep their old embeddings where the U-Net reads them most, and a
  shuffled list means what the same tags in order do.
The result is written in fp16 with the shipped file's keys (``--install``: over the shipped one,
atomically). It starts from the shipped text encoder, whichever that is: run it once.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loracam.models.loader import TOY_DIR
from loracam.toy.world import render, sample_doll, tags

SHIPPED = TOY_DIR / "text_encoder" / "model.safetensors"


@dataclass(frozen=True)
class Recipe:
    steps: int = 1500  # attention_loss steps (each with an embedding_loss batch)
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 50  # linear warm-up, then cosine to zero
    embed_steps: int = 1000  # embedding_loss alone first: cheap (no U-Net), it learns orders from the start
    embed_batch: int = 32
    embed: float = 1.0  # weight of embedding_loss beside attention_loss
    pool: int = 4000  # rendered dolls; their captions are drawn anew at every step
    full: float = 0.2  # share of captions that are the whole tag list in tags()' order
    empty: float = 0.05  # share of empty captions (the build's caption dropout was 0.1)
    max_dropout: float = 0.8  # the rest: each tag dropped at a rate drawn from [0, max_dropout] ...
    shuffle: float = 0.5  # ... and their tags shuffled this often
    shoes: float = 10.0  # extra loss weight on named shoes (see loss_weights)
    free: float = 0.1  # loss weight of the parts a caption does not name (see loss_weights)
    loss: str = "attention"  # or "v": the base's own diffusion loss through the U-Net
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# captions


def dropped(doll, rng: np.random.Generator, r: Recipe) -> list[str]:
    """sd-scripts' caption_tag_dropout_rate, at a rate drawn per caption from [0, max_dropout], so captions
    run from whole lists to one or two tags; ``1girl`` is never dropped (its keep_tokens: every prompt of the
    studio has its class tag). The kept tags stay in ``tags``' order."""
    rate = rng.uniform(0.0, r.max_dropout)
    return [t for t in tags(doll).split(", ") if t == "1girl" or rng.random() >= rate]


def shuffled(tag_list: list[str], rng: np.random.Generator) -> list[str]:
    """sd-scripts' shuffle_caption, ``1girl`` included (users write it anywhere)."""
    return [tag_list[i] for i in rng.permutation(len(tag_list))]


def caption(doll, rng: np.random.Generator, r: Recipe) -> str:
    """One training caption for ``doll``: empty, its full tag list in order, or a dropped-out one, shuffled
    with probability ``r.shuffle``."""
    u = rng.random()
    if u < r.empty:
        return ""
    if u < r.empty + r.full:
        return tags(doll)
    kept = dropped(doll, rng, r)
    return ", ".join(shuffled(kept, rng) if rng.random() < r.shuffle else kept)


# ---------------------------------------------------------------------------------------------
# data


# The parts a caption can leave out, each with the attributes that show there.
REGIONS = {"dress": ("dress", "pattern"), "shoes": ("shoes",), "hair": ("hair", "hair_style"),
           "background": ("background",)}


def part_masks(doll, size: int) -> np.ndarray:
    """[len(REGIONS), H/size, W/size]: the share of each latent pixel that each part covers, found by
    rendering the doll again with that part in the colour furthest from its own (exact, and only through
    the renderer's public record)."""
    from dataclasses import replace

    from loracam.toy.world import RGB

    base = render(doll).astype(np.int16)
    out = []
    for attr in REGIONS:
        alt = max(RGB, key=lambda c: sum((a - b) ** 2 for a, b in zip(RGB[c], RGB[getattr(doll, attr)])))
        moved = np.abs(render(replace(doll, **{attr: alt})).astype(np.int16) - base).max(axis=2) > 8
        h, w = moved.shape
        out.append(moved.reshape(h // size, size, w // size, size).mean(axis=(1, 3)))
    return np.stack(out).astype(np.float32)


def latent_pool(vae, count: int, seed: int, batch: int = 64):
    """``count`` base-world dolls, their VAE latents (posterior mean, scaled as the base trained them) and
    their parts' masks at latent size (``part_masks``).

    The encoder is frozen, so each render is encoded once; the toy posterior's std is ~1.4% of the latents'
    (build.train_vae starts it nearly deterministic), so the mean stands in for a sample.
    """
    from loracam.toy.probe import to_tensor

    rng = np.random.default_rng(seed)
    dolls = [sample_doll(rng) for _ in range(count)]
    out = []
    with torch.no_grad():
        for start in range(0, count, batch):
            x = to_tensor(np.stack([render(d) for d in dolls[start:start + batch]]))
            out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    latents = torch.cat(out)
    f = x.shape[-1] // latents.shape[-1]  # pixels per latent
    return dolls, latents, torch.from_numpy(np.stack([part_masks(d, f) for d in dolls]))


def loss_weights(masks: torch.Tensor, dolls, caps: list[str], r: Recipe) -> torch.Tensor:
    """[B, 1, h, w] per-pixel loss weights: 1; ``r.free`` on parts whose attributes the caption leaves out
    (the target shows the doll's own, which the caption cannot tell: that noise drowned the rest, and a little
    weight keeps those parts drawn as something); ``r.shoes`` more on named shoes (~2% of a full-body
    picture; the base's build needed its stage 5 for them too)."""
    from loracam.toy.judge import named

    w = torch.ones(len(caps), 1, *masks.shape[-2:])
    shoes = list(REGIONS).index("shoes")
    for i, (d, c) in enumerate(zip(dolls, caps)):
        said = named(c, d) if c else set(sum(REGIONS.values(), ()))
        free = [k for k, attrs in enumerate(REGIONS.values()) if not said & set(attrs)]
        if free:  # the parts' share of a pixel (edges are shared: at most all of it) goes from 1 to r.free
            w[i, 0] -= (1 - r.free) * masks[i, free].sum(dim=0).clamp(max=1)
        if "shoes" in said:
            w[i, 0] += r.shoes * masks[i, shoes]
    return w


# ---------------------------------------------------------------------------------------------
# training


def encode(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """[B, 77, C]: one 77-token chunk per caption, as the trainer and (for these short prompts) gen encode."""
    return text_encoder(_ids(tokenizer, captions))[0]


def noised(sched, latents: torch.Tensor, gen: torch.Generator):
    """(noisy latents, timesteps, the v-prediction target): the base's own noise schedule, timesteps uniform."""
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    target = sched.get_velocity(latents, noise, t) if sched.config.prediction_type == "v_prediction" else noise
    return sched.add_noise(latents, noise, t), t, target


def _ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _from_eot(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """[B, 77] 1.0 on each row's first end-of-text token and after it (the padding), else 0.0."""
    first = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    return (torch.arange(ids.shape[1])[None] >= first[:, None]).float()


def embedding_loss(tokenizer, te, teacher, dolls, rng: np.random.Generator, r: Recipe) -> torch.Tensor:
    """Two embedding-space terms with exact targets (no U-Net: cheap), on the rows from the first end-of-text
    token on. CLIP is causal and those padding rows see the whole prompt; the U-Net reads prompts mostly
    there (on the shipped base, swapping only them for another prompt's moved its prediction 3/4 of the way).
    - anchor: full lists in order, and "" (all rows), against the shipped encoder. Without it a run lost half
      the full lists' shoe colours (2% of a full-body picture's pixels: the other losses hardly see them).
      Tag rows stay free: causally "1girl, full body, yellow" cannot tell a yellow dress from yellow shoes,
      and pinning them to the old "yellow = dress" left partial prompts' shoe colours on the dress.
    - order: a partial list shuffled against the same tags in ``tags``' order through the encoder being
      trained (held fixed): the same tags make as many tokens in any order, so the rows line up.
    """
    n = len(dolls) // 2
    full = [tags(d) for d in dolls[:n]] + [""]
    ids = _ids(tokenizer, full)
    rows = _from_eot(tokenizer, ids)
    rows[-1] = 1.0
    with torch.no_grad():
        want = teacher(ids)[0]
    anchor = ((te(ids)[0] - want).pow(2).mean(dim=2) * rows).sum() / rows.sum()
    subsets = [dropped(d, rng, r) for d in dolls[n:]]
    ids = _ids(tokenizer, [", ".join(shuffled(k, rng)) for k in subsets])
    rows = _from_eot(tokenizer, ids)
    with torch.no_grad():
        want = encode(tokenizer, te, [", ".join(k) for k in subsets])
    order = ((te(ids)[0] - want).pow(2).mean(dim=2) * rows).sum() / rows.sum()
    return anchor + order


def cross_attentions(unet) -> list:
    """The U-Net's cross-attention modules (attn2 of each transformer block): where it reads the prompt."""
    from diffusers.models.attention import BasicTransformerBlock

    return [b.attn2 for b in unet.modules() if isinstance(b, BasicTransformerBlock)]


def teacher_reads(unet, layers, x_t, t, text) -> list[tuple]:
    """One no-grad U-Net pass; per cross-attention: (module, its queries' input, what it read)."""
    got = []
    hooks = [a.register_forward_hook(lambda mod, args, kw, out: got.append((mod, args[0], out)), with_kwargs=True)
             for a in layers]
    try:
        with torch.no_grad():
            unet(x_t, t, encoder_hidden_states=text, return_dict=False)
    finally:
        for h in hooks:
            h.remove()
    return got


def attention_loss(reads, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """How far each cross-attention, fed ``text``, reads from what it read in the teacher's pass, on that
    pass's queries (relative to the layer's output variance, pixels weighted by ``weights`` at its size).

    Layers that read the same make the whole U-Net predict the same; each layer's error is a short path back
    to the encoder, with no backward pass through the U-Net (4x the samples a second of a prediction loss).
    """
    h, w = weights.shape[-2:]
    total = torch.zeros(())
    for mod, queries, want in reads:
        scale = int(round((h * w / queries.shape[1]) ** 0.5))
        pw = F.adaptive_avg_pool2d(weights, (h // scale, w // scale)).flatten(1)[:, :, None]
        got = mod(queries, encoder_hidden_states=text)
        total = total + ((got - want).pow(2) * pw).sum() / (pw.sum() * want.shape[-1] * want.var())
    return total / len(reads)


def lr_at(step: int, r: Recipe) -> float:
    warm = min(1.0, (step + 1) / max(1, r.warmup))
    return r.lr * warm * 0.5 * (1 + np.cos(np.pi * step / r.steps))


def attention_step(model, teacher, layers, batch, r: Recipe) -> torch.Tensor:
    """The loss of one batch (dolls, latents, masks, captions): attention_loss, or with ``r.loss == "v"`` the
    U-Net's own objective on its prediction; both weighted by loss_weights."""
    dolls, latents, masks, caps, sched, gen = batch
    tok, te, unet = model.tokenizer, model.text_encoder, model.unet
    x_t, t, target = noised(sched, latents, gen)
    w = loss_weights(masks, dolls, caps, r)
    if r.loss == "v":
        pred = unet(x_t, t, encoder_hidden_states=encode(tok, te, caps), return_dict=False)[0]
        return (w * (pred - target).pow(2)).sum() / (w.sum() * pred.shape[1])
    full = ["" if c == "" else tags(d) for d, c in zip(dolls, caps)]
    with torch.no_grad():
        reads = teacher_reads(unet, layers, x_t, t, encode(tok, teacher, full))
    return attention_loss(reads, encode(tok, te, caps), w)


def train(model, r: Recipe, echo=print, init: Path | None = None) -> dict:
    """Fine-tune ``model.text_encoder`` in place (from ``init``'s weights if given; the targets stay the
    model's own encoder's); returns the run's log (losses, seconds)."""
    import copy

    from diffusers import DDPMScheduler

    torch.manual_seed(r.seed)
    t0 = time.time()
    dolls, latents, masks = latent_pool(model.vae, r.pool, r.seed)
    echo(f"encoded {r.pool} renders in {time.time() - t0:.0f} s")
    sched = DDPMScheduler.from_config(model.scheduler_config)
    te, tok = model.text_encoder, model.tokenizer
    teacher = copy.deepcopy(te)  # the shipped encoder, frozen
    if init is not None:
        from safetensors.torch import load_file

        te.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(init)).items()})
    te.requires_grad_(True).train()  # model.unet and model.vae stay frozen (load_base froze them)
    # What a word is stays (the 49k token embeddings, the held-out triggers among them, and 95% of the
    # encoder's weights); how the words of a prompt combine is what has to change. Frozen, they also cost
    # no dense gradient and no Adam update per step.
    te.get_input_embeddings().requires_grad_(False)
    opt = torch.optim.AdamW([q for q in te.parameters() if q.requires_grad], lr=r.lr, weight_decay=0.0)
    rng = np.random.default_rng(r.seed)
    gen = torch.Generator().manual_seed(r.seed)
    layers = cross_attentions(model.unet)
    log, window, t1 = {"loss": [], "embed_loss": []}, [], time.time()

    def embedding_batch() -> torch.Tensor:
        return embedding_loss(tok, te, teacher, [dolls[i] for i in rng.integers(0, len(dolls), r.embed_batch)], rng, r)

    def update(loss: torch.Tensor, lr: float) -> None:
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for step in range(r.embed_steps):
        loss = embedding_batch()
        update(loss, r.lr * min(1.0, (step + 1) / max(1, r.warmup)))
        window.append(loss.item())
        if (step + 1) % 250 == 0:
            log["embed_loss"].append([step + 1, round(float(np.mean(window)), 6)])
            echo(f"embedding step {step + 1}/{r.embed_steps}: loss {np.mean(window):.5f} ({time.time() - t1:.0f} s)")
            window = []
    window = []
    for step in range(r.steps):
        idx = rng.integers(0, len(dolls), r.batch)
        some = [dolls[i] for i in idx]
        batch = (some, latents[idx], masks[idx], [caption(d, rng, r) for d in some], sched, gen)
        loss = attention_step(model, teacher, layers, batch, r)
        embed = embedding_batch() if r.embed else torch.zeros(())
        update(loss + r.embed * embed, lr_at(step, r))
        window.append((loss.item(), embed.item()))
        if (step + 1) % 100 == 0 or step == r.steps - 1:
            main_loss, emb = np.mean(window, axis=0)
            log["loss"].append([step + 1, round(float(main_loss), 5), round(float(emb), 6)])
            echo(f"step {step + 1}/{r.steps}: loss {main_loss:.4f}, embedding {emb:.5f} ({time.time() - t1:.0f} s)")
            window = []
    te.requires_grad_(False).eval()
    log["train_seconds"] = round(time.time() - t1)
    log["encode_seconds"] = round(t1 - t0)
    return log


def save_fp16(text_encoder, path: Path, like: Path = SHIPPED) -> Path:
    """The weights in fp16 under exactly ``like``'s keys (the shipped file's layout), written aside and renamed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(like), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in text_encoder.state_dict().items() if k in keys}
    if set(state) != keys:
        raise RuntimeError(f"text encoder keys differ from {like}: {sorted(keys ^ set(state))[:5]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loracam.toy.prompts", description=__doc__.splitlines()[0])
    d = Recipe()
    for name, value in asdict(d).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("-o", "--output", type=Path, default=Path("build/toy-prompts/model.safetensors"))
    ap.add_argument("--init", type=Path, help="start from these text-encoder weights (targets stay the shipped)")
    ap.add_argument("--install", action="store_true", help=f"replace the shipped text encoder ({SHIPPED})")
    args = ap.parse_args(argv)
    r = Recipe(**{k: getattr(args, k) for k in asdict(d)})

    from loracam.models import LoadOptions, load_base

    model = load_base("toy", LoadOptions(torch.device("cpu"), torch.float32))
    log = train(model, r, init=args.init)
    out = save_fp16(model.text_encoder, SHIPPED if args.install else args.output)
    summary = {"recipe": asdict(r), "threads": torch.get_num_threads(), **log, "output": str(out)}
    if not args.install:  # the package holds only the weights
        out.with_name(out.stem + ".log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("loss", "embed_loss")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
