"""The ControlNet commands (``pose``); registered on the main app by loracam.cli."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from loracam.cli_util import user_errors
from loracam.errors import LoracamError

PREVIEW_RESOLUTION = 512  # the openpose annotator draws with the short side at 512; so does the preview


@user_errors
def pose(
    photo: Optional[Path] = typer.Argument(None, help="A photo of a person whose pose to copy."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output",
        help="The OpenPose JSON to write (default: NAME_pose.json here); a PNG drawing goes beside it."),
    template: Optional[str] = typer.Option(None, "--template", "-t",
                                           help="Export a shipped pose template instead (see --list)."),
    list_templates: bool = typer.Option(False, "--list", help="List the shipped pose templates."),
):
    """Make an OpenPose pose for ControlNet (JSON + PNG drawing) from a photo or a shipped template."""
    given = [what for what, value in (("PHOTO", photo), ("--template", template), ("--list", list_templates))
             if value]
    if len(given) != 1:
        raise LoracamError("give one of: a PHOTO to read the pose from, --template NAME, or --list"
                           + (f" (got {' and '.join(given)})" if given else ""))
    if list_templates:
        _list()
        return
    if template is not None:
        from loracam.control.templates import canonical_name, load_template

        name = canonical_name(template)
        json_path, png_path = _outputs(output, name)
        result, what = load_template(name), f"template {name}"
    else:
        json_path, png_path = _outputs(output, photo.stem)
        result, what = _from_photo(photo), str(photo)
    _write(result, json_path, png_path)
    from loracam.control.photo import describe

    typer.echo(f"{what}: {describe(result)}")
    typer.echo(f"wrote {json_path}")
    typer.echo(f"wrote {png_path} (its drawing, as ControlNet's openpose model sees it)")


def _list() -> None:
    from loracam.control.templates import TEMPLATES, load_template

    width = max(len(name) for name in TEMPLATES)
    typer.echo(f"{'name':<{width}}  people  description")
    for name, entry in TEMPLATES.items():
        typer.echo(f"{name:<{width}}  {len(load_template(name).people):>6}  {entry.description}")
    typer.echo("all 512x768; export one with: loracam pose --template NAME -o NAME.json")


def _outputs(output: Optional[Path], stem: str) -> tuple[Path, Path]:
    """The JSON and its PNG preview (same stem); neither may exist yet, since loracam never overwrites."""
    json_path = output if output is not None else Path(f"{stem}_pose.json")
    if json_path.suffix.lower() != ".json":
        raise LoracamError(f"-o {json_path}: the pose file must end in .json (its PNG drawing goes beside it)")
    png_path = json_path.with_suffix(".png")
    for path in (json_path, png_path):
        if path.exists():
            raise LoracamError(f"{path} already exists and loracam does not overwrite; choose another name with "
                               "-o or move the old file away")
    return json_path, png_path


def _from_photo(photo: Path):
    from loracam.control.photo import pose_from_photo
    from loracam.generate.images import load_image

    return pose_from_photo(load_image(photo, "the photo"), where=str(photo))


def _write(result, json_path: Path, png_path: Path) -> None:
    """The JSON, then the drawing; each file appears whole or not at all."""
    from PIL import Image

    from loracam.control.resize import processor_size
    from loracam.generate.images import png_with_text
    from loracam.io import atomic_write_bytes, writable_dir

    writable_dir(json_path.parent)
    drawing = Image.fromarray(result.draw(processor_size(result.size, PREVIEW_RESOLUTION)))
    text = json.dumps(result.to_json()) + "\n"
    for path, data in ((json_path, text.encode()), (png_path, png_with_text(drawing, {}))):
        try:
            atomic_write_bytes(path, data)
        except FileExistsError:  # appeared between the check and the write
            raise LoracamError(f"{path} appeared while writing and was left alone; run again with another "
                               "-o") from None


COMMANDS = [pose]
