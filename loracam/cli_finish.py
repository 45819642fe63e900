"""The finishing commands (``upscale``, ``detail``); registered on the main app by loracam.cli."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_util import parse_size, user_errors


class TileBar:
    """A tqdm bar over one image's tiles, opened at the first tile (a one-tile image shows none)."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit="tile", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


DETAIL_HELP = ("A detail pass, repeatable: DETECTOR[:PROMPT] with DETECTOR face, person, garment, shoes or "
               "mask:FILE; the prompt may hold <lora:...> tags and [SEP]. Default prompt: the image's own.")


def detail_passes(specs, denoising: float, confidence: float, padding: int | None, mask_blur: int | None,
                  controlnets=None):
    """--detail values as DetailPass objects (None when none were given); the Nth --detail-controlnet goes
    with the Nth pass ("none" or nothing: no ControlNet)."""
    from loracam.errors import LoracamError

    if not specs:
        if controlnets:
            raise LoracamError("--detail-controlnet goes with a --detail pass; give --detail too")
        return None
    from loracam.finish.detail import DetailPass

    controlnets = list(controlnets or ())
    if len(controlnets) > len(specs):
        raise LoracamError(f"{len(controlnets)} --detail-controlnet values for {len(specs)} --detail passes")
    controlnets += [""] * (len(specs) - len(controlnets))
    return tuple(DetailPass.parse(spec, denoising=denoising, confidence=confidence, padding=padding,
                                  mask_blur=mask_blur, control=detail_unit(c)) for spec, c in zip(specs, controlnets))


def detail_unit(spec: str) -> tuple:
    """``TYPE[:WEIGHT[:START:END]][:key=value...]`` of a detail pass's ControlNet: its source is the region."""
    from loracam.control.units import ControlUnit

    if not spec.strip() or spec.strip().lower() == "none":
        return ()
    from loracam.errors import LoracamError

    kind, _, rest = spec.partition(":")
    first = rest.split(":")[0].strip()
    if first and "=" not in first:
        try:
            float(first)
        except ValueError:
            raise LoracamError(f"--detail-controlnet {spec!r}: a detail pass's ControlNet is steered by its own "
                               "region (no source): write TYPE[:WEIGHT[:START:END]], e.g. openpose:0.8") from None
    return (ControlUnit.parse(f"{kind}::{rest}" if rest else f"{kind}:"),)


@user_errors
def upscale(
    images: List[Path] = typer.Argument(..., help="PNG/JPEG files or folders of them."),
    model: str = typer.Option("lanczos", "--model", "-m",
                              help="An upscaler file (.pth, .safetensors: ESRGAN, Real-ESRGAN, SwinIR, ...), "
                                   "toy-4x, lanczos or nearest."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Upscale by (default 4)."),
    resize: Optional[str] = typer.Option(None, "--resize", help="Upscale to WIDTHxHEIGHT instead (0 keeps aspect)."),
    tile: int = typer.Option(512, "--tile", help="Tile side in input pixels (0: no tiles)."),
    overlap: int = typer.Option(32, "--overlap", help="Tile overlap in input pixels."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    upscaler_dir: Optional[List[Path]] = typer.Option(None, "--upscaler-dir", help="Where model names are found."),
    force: bool = typer.Option(False, "--force", help="Allow outputs over 200 megapixels."),
    output: Path = typer.Option(Path("outputs/extras"), "-o", "--output", help="Output folder (never overwritten)."),
):
    """Upscale images (A1111's Extras): PNGs keep their infotext and get an `extras` chunk."""
    from loracam.errors import LoracamError
    from loracam.finish.extras import upscale_files
    from loracam.generate.upscale import TileOptions, load_upscaler
    from loracam.io import check_writable_dir
    from loracam.models import pick_device

    if scale is not None and resize is not None:
        raise LoracamError("give --scale or --resize, not both")
    size = None
    if resize is not None:
        w, h = parse_size(resize)
        size = (w or 0, h or 0)
        if not any(size):
            raise LoracamError("--resize 0x0 gives no size; set at least one side")
    check_writable_dir(output)
    upscaler = load_upscaler(model, pick_device(device), TileOptions(tile, overlap), tuple(upscaler_dir or ()))
    notes = lambda text: typer.secho(f"note: {text}", err=True, fg=typer.colors.YELLOW)  # noqa: E731
    done = upscale_files(images, upscaler, output, scale=None if size else (scale or 4.0), resize=size,
                         notes=notes, progress=lambda p: TileBar(p.name), force=force)
    for d in done:
        typer.echo(f"{d.output}  ({d.size[0]}x{d.size[1]}, {upscaler.name})")



@user_errors
def detail(
    images: List[Path] = typer.Argument(..., help="Finished PNGs (their infotext says how they were made), or folders."),
    passes: List[str] = typer.Option(..., "--detail", help=DETAIL_HELP),
    detail_denoising: float = typer.Option(0.4, "--detail-denoising"),
    detail_confidence: float = typer.Option(0.3, "--detail-confidence"),
    detail_padding: Optional[int] = typer.Option(None, "--detail-padding"),
    detail_mask_blur: Optional[int] = typer.Option(None, "--detail-mask-blur"),
    detail_controlnet: Optional[List[str]] = typer.Option(None, "--detail-controlnet",
                                                          help="TYPE[:WEIGHT[:START:END]] for the Nth --detail pass."),
    controlnet_dir: Optional[List[Path]] = typer.Option(None, "--controlnet-dir", help="Folder with ControlNet models."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="For images without infotext: their prompt."),
    negative: str = typer.Option("", "--negative"),
    seed: int = typer.Option(0, "--seed", help="For images without infotext."),
    base: Optional[str] = typer.Option(None, "--base", help="The model (default: the one the infotext names)."),
    ckpt_dir: Optional[List[Path]] = typer.Option(None, "--ckpt-dir"),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir"),
    device: Optional[str] = typer.Option(None, "--device"),
    output: Path = typer.Option(Path("outputs/detail"), "-o", "--output", help="Output folder (never overwritten)."),
):
    """Run detail passes (ADetailer's algorithm) on finished images; the result keeps and extends their infotext."""
    from loracam.cli_util import services
    from loracam.finish.apply import detail_files
    from loracam.io import check_writable_dir

    check_writable_dir(output)
    done = detail_files(images, detail_passes(passes, detail_denoising, detail_confidence, detail_padding,
                                              detail_mask_blur, detail_controlnet),
                        output, services(), prompt=prompt, negative=negative, seed=seed, base=base,
                        ckpt_dirs=tuple(ckpt_dir or ()), lora_dirs=tuple(lora_dir or ()), device=device,
                        controlnet_dirs=tuple(controlnet_dir or ()))
    for path, notes in done:
        for note in notes:
            typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
        typer.echo(str(path))


COMMANDS = [upscale, detail]
