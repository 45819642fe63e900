"""Reproducible numerics: importing loracam asks MKL for its reproducible mode before torch computes anything,
the user's own choice wins, and CUDA's deterministic settings hold for the training loop only.

That a process started as a user starts it trains exactly: test_train.py's kill -9 resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loracam.numerics import DEFAULTS, OPT_OUT, deterministic_training, set_process_defaults

REPO = Path(__file__).resolve().parent.parent
STRICT_AUTO = 0x10002  # MKL_CBWR_AUTO | MKL_CBWR_STRICT, as mkl_cbwr_get answers


def fresh_env(**extra: str) -> dict:
    """The environment of a user's shell: none of the settings this test process got from importing loracam."""
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS and k != OPT_OUT}
    return {**env, **extra}


def python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_defaults_fill_only_what_the_user_left_unset():
    env: dict = {}
    assert set_process_defaults(env) == DEFAULTS and env == DEFAULTS
    mine = {"MKL_CBWR": "COMPATIBLE"}
    set_process_defaults(mine)
    assert mine["MKL_CBWR"] == "COMPATIBLE" and mine["CUBLAS_WORKSPACE_CONFIG"] == DEFAULTS["CUBLAS_WORKSPACE_CONFIG"]
    out = {OPT_OUT: "0"}
    assert set_process_defaults(out) == {} and out == {OPT_OUT: "0"}


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch build has no MKL")
def test_importing_loracam_puts_mkl_in_its_reproducible_mode_before_torch_computes():
    code = ("import loracam, torch; from loracam.numerics import mkl_mode, cpu_note; "
            "x = torch.ones(64, 64); x @ x; print(mkl_mode(), cpu_note())")
    assert python(code, fresh_env()) == f"{STRICT_AUTO} None"
    # the user's own value wins
    assert python(code, fresh_env(MKL_CBWR="COMPATIBLE")) == "3 None"  # MKL_CBWR_COMPATIBLE
    # torch computing before loracam is imported is too late: loracam says so rather than promise exactness
    late = ("import torch; x = torch.ones(64, 64); x @ x; import loracam; from loracam.numerics import cpu_note; "
            "print(cpu_note())")
    assert "torch did its first matrix product before loracam was imported" in python(late, fresh_env())
    assert f"{OPT_OUT}=0 is set" in python(late.replace("import torch;", "import loracam, torch;"),
                                           fresh_env(**{OPT_OUT: "0"}))


def test_deterministic_training_is_scoped_to_the_loop():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with deterministic_training("cpu"):
        assert torch.are_deterministic_algorithms_enabled() == before[0]  # nothing to do on a CPU
    with deterministic_training("cuda"):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.deterministic
    with deterministic_training("cuda", enabled=False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before

