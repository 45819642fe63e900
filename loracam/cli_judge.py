"""The ``judge`` command: rank candidate images against the subject's photos; registered by loracam.cli."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_util import user_errors
from loracam.errors import LoracamError

def parse_face_size(text: str | None) -> tuple[float, float] | None:
    """``LO:HI`` fractions of the image's shorter side."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise LoracamError(f"bad --face-size {text!r}; write LO:HI as fractions of the image's shorter side, "
                           "e.g. 0.23:0.59") from None
    if hi > 2:
        raise LoracamError(f"--face-size {text}: these look like pixels; write fractions of the image's shorter "
                           f"side (FaceChain's 120:300 px of 512 is 0.23:0.59)")
    return lo, hi


@user_errors
def judge(
    images: List[Path] = typer.Argument(..., help="Candidate images, or folders of them."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", "-r",
        help="The subject: a dataset made by `loracam prep`, a folder of their photos, or one photo."),
    top: int = typer.Option(6, "--top", help="How many best images to name."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full ranking here (never overwritten)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Write a contact sheet PNG here (never overwritten)."),
    identity: str = typer.Option("dlib", "--identity", help="dlib, toy, onnx:PATH (an ArcFace-style model) or none."),
    aesthetic: Optional[str] = typer.Option(None, "--aesthetic",
                                            help="CLIP_DIR:MLP.pth: the LAION aesthetic predictor (your files)."),
    face_size: Optional[str] = typer.Option(
        None, "--face-size", help="LO:HI face box over the shorter side (default 0.23:0.59; toy 0.4:1.25)."),
    concept: Optional[str] = typer.Option(
        None, "--concept", help="Toy identity: sks, testdress or myshoes (default: the dataset's trigger)."),
    subject: Optional[str] = typer.Option(None, "--subject",
                                          help="face, person, garment, shoes, pet, object (default: the dataset's)."),
    prompt: Optional[str] = typer.Option(None, "--prompt",
                                         help="Check prompt adherence against this instead of each image's infotext."),
):
    """Rank images: FaceChain's face filters, identity against the subject's own photo-to-photo baseline,
    quality, prompt adherence (toy world) and an optional aesthetic rating, in one score.

    combined = artefacts x sum(w x term) / sum(w), over the terms an image has
    identity_rel = clip(identity / baseline, 0, 1); baseline: the reference photos' own leave-one-out similarity
    quality = (sharpness + exposure) / 2;  aesthetic_n = clip((aesthetic - 1) / 9, 0, 1)
    w: identity_rel 0.55, adherence 0.20, quality 0.15, aesthetic_n 0.10
    Dropped images (not exactly one face, face size outside --face-size, broken render) come last, unscored.
    """
    from loracam.judge.inputs import collect_images
    from loracam.judge.rank import JudgeConfig, check_outputs, judge_images, write_ranking

    config = JudgeConfig(identity=identity, concept=concept, subject=subject, face_size=parse_face_size(face_size),
                         top=top, aesthetic=aesthetic)
    check_outputs(json_path, sheet)  # before minutes of judging, not after
    prompts = [prompt] * len(collect_images(images)) if prompt is not None else None
    ranking = judge_images(images, reference=reference, config=config, prompts=prompts)
    for line in report_lines(ranking):
        typer.echo(line)
    for path in write_ranking(ranking, json_path, sheet):
        typer.echo(f"wrote {path}")


def report_lines(ranking) -> list[str]:
    """The ranking as a table: kept images best first, then the dropped ones with their reasons."""
    lines = []
    if ranking.reference:
        lines.append(ranking.reference)
    for note in ranking.notes:
        lines.append(f"note: {note}")
    cols = [("identity", "identity", "{:.3f}"), ("of ref", "identity_rel", "{:.0%}"), ("quality", "quality", "{:.2f}"),
            ("prompt", "adherence", "{:.0%}"), ("aesth", "aesthetic", "{:.2f}")]
    lines.append(f"{'rank':>4}  {'score':>6}  " + "  ".join(f"{h:>8}" for h, _, _ in cols) + "  image")
    kept = [e for e in ranking.entries if e.kept]
    for e in kept:
        vals = "  ".join(f"{fmt.format(e.scores[k]) if k in e.scores else '-':>8}" for _, k, fmt in cols)
        lines.append(f"{e.rank:>4}  {e.combined:>6.3f}  {vals}  {e.path}")
    dropped = [e for e in ranking.entries if not e.kept]
    if dropped:
        lines.append(f"dropped {len(dropped)}:")
        lines += [f"  {e.path}: {e.reason}" for e in dropped]
    best = ranking.top()
    lines.append(f"top {len(best)}: " + (", ".join(e.path.name for e in best) if best else
                                         "none (every image was dropped; see the reasons above)"))
    return lines


COMMANDS = [judge]
