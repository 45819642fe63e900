"""Reproducible numerics: the same inputs give the same bits, run after run, where loracam promises it.

Two promises rest on this module: a training run stopped and resumed ends with the very tensors of an
uninterrupted run, and ``gen --from`` re-renders an image identically on the same machine.

- CPU: torch's CPU build does its matrix products in Intel MKL. Unless Conditional Numerical
  Reproducibility is asked for, MKL picks its code path per call on AVX-512 CPUs (how the threads split
  the work, how the data is aligned), so two identical runs with 2+ threads differ in the last bits and
  a resumed training run drifts away from an uninterrupted one. ``MKL_CBWR=AUTO,STRICT`` fixes the path.
  MKL reads the variable once, when torch first calls it, so it must be in the environment before then:
  ``import loracam`` sets it (this module imports no torch at import time), before any entry point
  (the CLI, ``python -m loracam.train``, the toy builders, worker processes) loads torch.
- CUDA: cuBLAS needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its first handle is made)
  and torch's deterministic algorithms while training; ``deterministic_training`` turns those on for
  the training loop only and restores the user's settings after it.

A value the user set wins; ``LORACAM_REPRODUCIBLE=0`` leaves the environment alone (faster, not exact).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, MutableMapping

OPT_OUT = "LORACAM_REPRODUCIBLE"
# MKL's "AUTO": the best code path this CPU supports, fixed for the process; "STRICT": bitwise the same
# whatever the number of threads (MKL's CNR documentation). cuBLAS: 8 buffers of 4 MiB, as torch's
# reproducibility notes give it.
DEFAULTS = {"MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
_MKL_STRICT = 0x10000  # MKL_CBWR_STRICT, or-ed into the branch value mkl_cbwr_get returns
_MKL_BRANCH_OFF = 1  # MKL_CBWR_BRANCH_OFF: no reproducibility mode


def set_process_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put the reproducibility settings into ``environ`` where the user has not; return what was set."""
    if environ.get(OPT_OUT, "").strip().lower() in ("0", "no", "false", "off"):
        return {}
    added = {k: v for k, v in DEFAULTS.items() if k not in environ}
    environ.update(added)
    return added


def mkl_mode() -> int | None:
    """MKL's reproducibility branch in this process (``mkl_cbwr_get``), or None where it cannot be read.

    torch links MKL statically and exports only MKL's service entry point for it; a build without MKL
    (or another layout) answers None, which means "unknown", never "off".
    """
    import ctypes

    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return get(-1) & 0xFFFFFFFF  # MKL_CBWR_ALL


def cpu_note() -> str | None:
    """Why bit-exact results are not promised on this CPU process, or None when they are."""
    mode = mkl_mode()
    if mode is None or mode != _MKL_BRANCH_OFF:
        return None
    why = (f"{OPT_OUT}=0 is set" if os.environ.get(OPT_OUT) else
           "torch did its first matrix product before loracam was imported")
    return (f"MKL's reproducibility mode is off ({why}): a resumed run can differ from an uninterrupted one in "
            "the last bits. Set MKL_CBWR=AUTO,STRICT in the environment (or import loracam before torch) for "
            "exact results")


@contextmanager
def deterministic_training(device_type: str, enabled: bool = True) -> Iterator[None]:
    """Deterministic CUDA kernels while training (what an exact resume needs); the settings are restored after.

    ``warn_only``: an op without a deterministic kernel warns instead of stopping a user's training run.
    """
    import torch

    if not enabled or device_type != "cuda":
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
