"""What every command of the CLI shares: the error wrapper, size parsing, services and a progress bar."""

from __future__ import annotations

import dataclasses
import functools
import sys

import typer

from loracam.errors import LoracamError


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn LoracamError into a one-line message and a non-zero exit, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoracamError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
    return wrapper


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LoracamError(f"bad --size {text!r}; write WIDTHxHEIGHT, e.g. 512x768") from None
    return w, h


def services():
    from loracam.models import HashCache, ModelCache, default_cache_path

    return ModelCache(HashCache(default_cache_path()))


class StepBar:
    """A tqdm progress bar over all sampling steps of a run, shown from the first step on (so errors
    found while loading are not printed under an empty bar)."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __call__(self, i: int, n: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def asdict(obj) -> dict:
    """A frozen config's fields, shallow (tuples stay tuples), for merging with command-line flags."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
