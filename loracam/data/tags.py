"""Captions as comma-separated tags, and tag editing over a dataset folder's caption sidecars.

A caption is the first line of a ``.txt`` file next to an image with the same stem (the kohya GUI
convention; sd-scripts alone defaults to ``.caption``). Only those sidecars are ever rewritten, each one
atomically and only after every file has been read, so a bad file stops the edit before anything changed;
image files are never opened for writing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loracam.errors import LoracamError
from loracam.io import atomic_write

# The extensions kohya's dataset loader picks up (compared case-insensitively here).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXT = ".txt"


# ---------------------------------------------------------------------------------------------
# captions as tag lists


def clean_tag(tag: str) -> str:
    """A tag with its ends stripped and inner runs of whitespace made single spaces."""
    return " ".join(tag.split())


def split_tags(caption: str) -> list[str]:
    """The comma-separated tags of a caption, stripped, empties dropped, in order."""
    return [t for t in (clean_tag(part) for part in caption.split(",")) if t]


def join_tags(tags: Sequence[str]) -> str:
    """Tags as one caption line."""
    return ", ".join(tags)


def _check_trigger(trigger: str) -> str:
    trig = clean_tag(trigger)
    # A comma would make the trigger two tags, and kohya's keep_tokens would then pin only half of it.
    if not trig or "," in trig or "\n" in trigger:
        raise LoracamError(f"the trigger must be one word or phrase without commas (got {trigger!r})")
    return trig


def _trigger_and_class(trigger: str, class_phrase: str, tags: Sequence[str]) -> list[str]:
    # FaceChain computed booru tags for faces and threw them away: fewer tags gave higher identity
    # similarity, because every attribute left out of the caption is learned into the trigger.
    return [trigger, *split_tags(class_phrase)]


def _trigger_and_tags(trigger: str, class_phrase: str, tags: Sequence[str]) -> list[str]:
    # The NGA guide's garment captions: the trigger, then what the tagger saw; tags describe what may
    # vary so the trigger keeps only the garment itself. Without a tagger the class phrase stands in:
    # a caption file replaces kohya's folder class text, so "testdress" alone would lose "dress".
    extra = _tag_set(list(tags)) if tags else split_tags(class_phrase)
    return edit_tags([trigger, *extra], dedupe=True, trigger_first=trigger)


CAPTION_TEMPLATES: dict[str, Callable[[str, str, Sequence[str]], list[str]]] = {
    "face": _trigger_and_class,
    "person": _trigger_and_tags,
    "garment": _trigger_and_tags,
    "shoes": _trigger_and_tags,
    "pet": _trigger_and_tags,
    "object": _trigger_and_tags,
}


def caption_for(subject: str, trigger: str, class_phrase: str, tags: Sequence[str] = ()) -> str:
    """The training caption for one crop of ``subject``: face -> trigger + class phrase, others -> trigger + tags."""
    template = CAPTION_TEMPLATES.get(subject)
    if template is None:
        raise LoracamError(f"unknown subject {subject!r}; use one of {', '.join(CAPTION_TEMPLATES)}")
    return join_tags(template(_check_trigger(trigger), class_phrase, tags))


def reg_caption(class_phrase: str) -> str:
    """The caption of a regularization image: the class text alone, as kohya's folder name would give."""
    tags = split_tags(class_phrase)
    if not tags:
        raise LoracamError("the class phrase of regularization images must not be empty (e.g. --class woman)")
    return join_tags(tags)


# ---------------------------------------------------------------------------------------------
# editing tag lists


@dataclass
class _Counts:
    added: int = 0
    removed: int = 0
    replaced: int = 0
    deduplicated: int = 0


def _tag_set(values: Sequence[str] | str) -> list[str]:
    # A string is one caption-like value ("red dress, hat"), not a sequence of characters.
    parts = [values] if isinstance(values, str) else list(values)
    return [t for part in parts for t in split_tags(part)]


def _edit(tags: Sequence[str], add: Sequence[str] | str, remove: Sequence[str] | str,
          replace: Mapping[str, str], dedupe: bool, trigger_first: str | None) -> tuple[list[str], _Counts]:
    counts = _Counts()
    adds, removes = _tag_set(add), set(_tag_set(remove))
    both = [t for t in adds if t in removes]
    if both:
        raise LoracamError(f"{', '.join(both)} is both added and removed; say one or the other")
    subs = {clean_tag(k): split_tags(v) for k, v in replace.items()}
    out: list[str] = []
    for tag in (clean_tag(t) for t in tags):
        if not tag:
            continue
        if tag in subs and subs[tag] != [tag]:
            out.extend(subs[tag])  # in place, so keep_tokens and tag order mean what they meant
            counts.replaced += 1
        else:
            out.append(tag)
    kept = [t for t in out if t not in removes]
    counts.removed = len(out) - len(kept)
    for tag in adds:
        if tag not in kept:
            kept.append(tag)
            counts.added += 1
    if dedupe:
        unique = list(dict.fromkeys(kept))
        counts.deduplicated = len(kept) - len(unique)
        kept = unique
    if trigger_first is not None:
        trig = _check_trigger(trigger_first)
        rest = [t for t in kept if t != trig]
        if len(rest) == len(kept):
            counts.added += 1
        counts.deduplicated += max(0, len(kept) - len(rest) - 1)
        kept = [trig, *rest]
    return kept, counts


def edit_tags(tags: Sequence[str], *, add: Sequence[str] | str = (), remove: Sequence[str] | str = (),
              replace: Mapping[str, str] | None = None, dedupe: bool = True,
              trigger_first: str | None = None) -> list[str]:
    """Tags after, in order: replace (in place), remove (exact match), add (at the end), dedupe, trigger first."""
    return _edit(tags, add, remove, replace or {}, dedupe, trigger_first)[0]


# ---------------------------------------------------------------------------------------------
# dataset folders


@dataclass(frozen=True)
class EditReport:
    """What ``edit_dataset`` did (or, with dry_run, would do)."""

    files: int  # caption sidecars looked at
    changed: tuple[Path, ...]
    added: int
    removed: int
    replaced: int
    deduplicated: int
    orphans: tuple[Path, ...] = field(default=())  # .txt files with no image: left alone
    dry_run: bool = False

    @property
    def files_changed(self) -> int:
        return len(self.changed)

    def summary(self) -> str:
        """One line for the CLI."""
        verb = "would change" if self.dry_run else "changed"
        line = (f"{verb} {self.files_changed} of {self.files} captions: {self.added} tags added, "
                f"{self.removed} removed, {self.replaced} replaced, {self.deduplicated} duplicates dropped")
        if self.orphans:
            line += f"; left alone {len(self.orphans)} caption files with no image next to them"
        return line

    __str__ = summary  # so printing the report (as the CLI does) shows the line, not the dataclass

def is_image(path: Path) -> bool:
    """Whether kohya would load ``path`` as a training image."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(root: Path) -> list[tuple[Path, list[str]]]:
    """Every folder under root (root included) with its file names, sorted, hidden entries skipped."""
    if not root.is_dir():
        raise LoracamError(f"{root} is not a folder; pass the dataset folder (the one holding img/ or the subsets)")
    found = []
    for folder, dirs, files in os.walk(root):
        # Hidden names are other tools' state and our own in-flight temporary files.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.append((Path(folder), sorted(f for f in files if not f.startswith("."))))
    return found


def caption_files(root: Path, caption_ext: str = CAPTION_EXT) -> tuple[list[Path], list[Path]]:
    """The caption sidecars under ``root`` that sit next to an image, and the orphans that do not."""
    paired, orphans = [], []
    for folder, files in _walk(Path(root)):
        stems = {Path(f).stem for f in files if is_image(Path(f))}
        for name in files:
            if Path(name).suffix == caption_ext:
                (paired if Path(name).stem in stems else orphans).append(folder / name)
    return paired, orphans


def read_caption(path: Path) -> str:
    """The first line of a caption file (the only line kohya reads), without a byte-order mark."""
    return _decode(path, Path(path).read_bytes()).partition("\n")[0].rstrip("\r")


def _decode(path: Path, data: bytes) -> str:
    try:
        # utf-8-sig: Windows editors add a BOM that kohya would otherwise glue onto the first tag.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LoracamError(
            f"{path} is not UTF-8 text; re-save it as UTF-8 and run again (nothing was changed)"
        ) from None


def _rewrite(text: str, tags: list[str]) -> str:
    """``text`` with its first line replaced by ``tags``; later lines and the line ending kept as they were."""
    first, sep, rest = text.partition("\n")
    cr = "\r" if first.endswith("\r") else ""
    return join_tags(tags) + (cr + sep + rest if sep else "")


def _write_like(path: Path, data: bytes) -> None:
    """An edited caption keeps its own permissions, not the umask's."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=True, mode=stat.S_IMODE(path.stat().st_mode))


def edit_dataset(root: Path, *, add: Sequence[str] | str = (), remove: Sequence[str] | str = (),
                 replace: Mapping[str, str] | None = None, dedupe: bool = True, trigger_first: str | None = None,
                 caption_ext: str = CAPTION_EXT, dry_run: bool = False) -> EditReport:
    """Apply ``edit_tags`` to every caption sidecar under ``root`` that belongs to an image."""
    _edit([], add, remove, replace or {}, dedupe, trigger_first)  # bad options fail before any file is read
    paired, orphans = caption_files(Path(root), caption_ext)
    total, pending = _Counts(), []
    for path in paired:  # read and edit everything first: a bad file must stop us before any write
        text = _decode(path, path.read_bytes())
        old = split_tags(text.partition("\n")[0])
        new, counts = _edit(old, add, remove, replace or {}, dedupe, trigger_first)
        if new != old:
            pending.append((path, _rewrite(text, new)))
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(counts, name))
    if not dry_run:
        for path, text in pending:
            _write_like(path, text.encode("utf-8"))
    return EditReport(files=len(paired), changed=tuple(p for p, _ in pending), added=total.added,
                      removed=total.removed, replaced=total.replaced, deduplicated=total.deduplicated,
                      orphans=tuple(orphans), dry_run=dry_run)


def _class_text(folder_name: str) -> str | None:
    """The class text of a kohya subset folder ``<repeats>_<text>``, or None if it is not one."""
    repeats, sep, text = folder_name.partition("_")
    return text if sep and repeats.isdigit() and int(repeats) > 0 else None


def tag_frequency(root: Path, caption_ext: str = CAPTION_EXT) -> dict[str, dict[str, int]]:
    """{subset folder name: {tag: images captioned with it}}, as kohya records it in ss_tag_frequency."""
    freq: dict[str, dict[str, int]] = {}
    for folder, files in _walk(Path(root)):
        images = [f for f in files if is_image(Path(f))]
        if not images:
            continue
        # Same-named folders (img/1_x and reg/1_x) share one entry, as they do in kohya's metadata.
        counts = freq.setdefault(folder.name, {})
        names = set(files)
        for image in images:
            sidecar = Path(image).stem + caption_ext
            # Without a sidecar kohya trains on the folder's class text, and counts that.
            caption = read_caption(folder / sidecar) if sidecar in names else _class_text(folder.name) or ""
            # kohya lower-cases tags here (only here), so "Red dress" and "red dress" are one entry.
            for tag in split_tags(caption):
                counts[tag.lower()] = counts.get(tag.lower(), 0) + 1
    return freq
