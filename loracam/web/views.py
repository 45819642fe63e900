"""What the web pages show, read from the job store and the job folders (plain data: no gradio here).

Every path handed to the page is inside the studio folder; the app serves that folder and nothing else."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from loracam.errors import LoracamError
from loracam.studio.job import is_checkpoint
from loracam.studio.store import JobStore

JOB_COLUMNS = ["job", "kind", "status", "steps", "now", "worker", "updated", "message"]


def jobs_table(store: JobStore, requests: bool = True) -> list[list]:
    """One row a job, newest first: what the Jobs page lists (without the pages' Generate, Grid and Tune
    requests unless ``requests``: a click each, they would bury the studio's jobs)."""
    from loracam.studio.tasks import REQUESTS

    queued = set(store.queued())
    rows = []
    for job in reversed(store.jobs()):
        if not requests and job.kind in REQUESTS:
            continue
        steps = store.steps(job.name)
        done = sum(s.status == "done" for s in steps)
        now = next((s.name for s in steps if s.status == "running"), "")
        status = job.status + (" (in queue)" if job.name in queued and job.status not in ("queued", "running") else "")
        worker = _runner(store, job) if job.status == "running" and job.owner else ""
        rows.append([job.name, job.kind, status, f"{done}/{len(steps)}", now, worker,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated)), job.message or ""])
    return rows


def _runner(store: JobStore, job) -> str:
    """Who runs a job: the Celery worker's name when a worker took it (its "worker" event), else host:pid."""
    named = store.last_event(job.name, "worker")
    return named.removeprefix("run by ") if named else job.owner


@dataclass
class JobView:
    """One job as its page shows it."""

    name: str
    status: str
    summary: str  # markdown: steps with times, the last events
    contact_sheet: Path | None = None
    prep_report: str = ""  # prep's decisions (dataset/report.md)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) as training writes them
    previews: list[Path] = field(default_factory=list)  # candidates rendered so far, newest last
    gallery: list[tuple[Path, str]] = field(default_factory=list)  # kept images and their scores
    downloads: list[Path] = field(default_factory=list)  # the LoRA, the gallery's report, the finished images


def job_view(store: JobStore, name: str, previews: int = 24) -> JobView:
    job = store.job(name)
    folder = Path(job.folder)
    lines = [f"**{job.name}**: {job.kind} job, **{job.status}**" + (f" ({job.message})" if job.message else "")]
    for s in store.steps(name):
        took = f", {s.detail['seconds']} s" if s.detail.get("seconds") is not None else ""
        err = f": {s.detail['error']}" if s.detail.get("error") else ""
        lines.append(f"- {s.name}: {s.status}{took}{err}")
    events = store.events(name, last=6)
    if events:
        lines.append("")
        lines += [f"`{time.strftime('%H:%M:%S', time.localtime(t))}` {kind}: {msg}  " for t, kind, msg in events]
    view = JobView(job.name, job.status, "\n".join(lines))
    sheet = folder / "dataset" / "contact_sheet.png"
    view.contact_sheet = sheet if sheet.is_file() else None
    report = folder / "dataset" / "report.md"
    view.prep_report = report.read_text(errors="replace") if report.is_file() else ""
    view.loss = training_loss(folder / "lora")
    view.previews = sorted(folder.glob("candidates/*/*.png"), key=lambda p: p.stat().st_mtime)[-previews:]
    view.gallery = gallery_items(folder)
    view.downloads = [p for p in [*sorted((folder / "lora").glob("*.safetensors")),
                                  folder / "gallery" / "report.json"]
                      if p.is_file() and not is_checkpoint(p)] + [p for p, _ in view.gallery]
    return view


def training_loss(lora_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) from the training's event log, as far as it is written (the last line may be half-written)."""
    out = []
    for log in sorted(lora_dir.glob("*.events.jsonl")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "step" and "loss" in ev:
                out.append((int(ev["step"]), float(ev["loss"])))
    return out


def gallery_items(folder: Path) -> list[tuple[Path, str]]:
    """The kept images with a caption of their rank and scores (gallery/report.json), style by style."""
    report = folder / "gallery" / "report.json"
    if not report.is_file():
        return []
    data = json.loads(report.read_text())
    out = []
    for style in data.get("styles", []):
        for item in style.get("kept", []):
            path = folder / item["file"]
            if path.is_file():
                scores = item.get("scores", {})
                parts = [f"{k} {scores[k]:.2f}" for k in ("identity_rel", "adherence", "quality") if k in scores]
                out.append((path, f"{style['style']} #{item.get('rank')}: {item.get('combined', 0):.2f} "
                                  f"({', '.join(parts)})"))
    return out


def library_rows(lora_dirs: list[Path], hash_cache, hide=lambda path: False) -> list[list]:
    """The LoRAs under the folders (but those ``hide`` says): name, family, dim, hash, trigger/dataset and
    training steps from metadata."""
    from loracam.info import describe
    from loracam.lora import LoraLibrary

    rows = []
    for path in LoraLibrary(lora_dirs, hash_cache).files():
        if hide(path):
            continue
        try:
            d = describe(path, hash_cache)
        except Exception as exc:  # a broken file is listed with its reason, not hidden
            rows.append([path.stem, "", "", "", f"unreadable: {exc}", str(path)])
            continue
        meta = d.get("metadata") or {}
        about = meta.get("ss_tag_frequency") and "tags" or ""
        cfg = meta.get("loracam_config")
        if cfg:
            try:
                c = json.loads(cfg)
                about = f"trained by loracam: {c.get('subject', '')}, {c.get('max_steps', '')} steps"
            except ValueError:
                pass
        rows.append([path.stem, d.get("family", ""), str(d.get("dim", "")), d.get("hash", ""), about, str(path)])
    return rows


def lora_preview(path: Path) -> Path | None:
    """A LoRA's preview image as A1111's extra networks keep it (NAME.preview.png, NAME.png beside the file)."""
    for suffix in (".preview.png", ".png", ".preview.jpg", ".jpg"):
        p = path.with_name(path.stem + suffix)
        if p.is_file():
            return p
    return None


BASE_COLUMNS = ["name", "family", "size", "file"]


def base_rows(model_dirs: list[Path]) -> list[list]:
    """The base models Generate, Grid, Tune and Train can use: the built-in toy, then the checkpoints
    (.safetensors, read by header only: a 2-7 GB file is not hashed to be listed) and diffusers folders
    under the folders."""
    from loracam.models.families import family_of_checkpoint
    from loracam.models.loader import checkpoint_family, checkpoint_keys, folder_family

    rows = [["toy", "toy (built-in)", "", "toy"]]
    for d in model_dirs:
        for path in sorted(Path(d).rglob("*")):
            if path.is_dir() and (path / "model_index.json").is_file():
                try:
                    family = f"{folder_family(path).short} (diffusers folder)"
                except LoracamError as exc:
                    family = f"not usable: {exc}"
                rows.append([path.name, family, "", str(path)])
            elif path.is_file() and path.suffix.lower() == ".safetensors":
                try:
                    keys = checkpoint_keys(path, allow_pickle=False)
                except Exception as exc:  # listed with its reason, not hidden
                    rows.append([path.stem, f"unreadable: {exc}", "", str(path)])
                    continue
                if family_of_checkpoint(keys) or any(k.startswith("model.diffusion_model.") for k in keys):
                    try:
                        family = checkpoint_family(keys, path.name).short
                    except LoracamError as exc:  # SDXL, FLUX, ...: shown, with why it cannot be used (yet)
                        family = f"not usable: {exc}"
                    rows.append([path.stem, family, f"{path.stat().st_size / 2**30:.2f} GB", str(path)])
    return rows
