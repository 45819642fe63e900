"""Tolerances that follow from float32 rounding, for tests that compare two computations of the same math.

- One sum of k products (a matrix product, a LoRA's up @ down): every float32 evaluation, in any summation
  order, lies within gamma_k * sum|a_i b_i| of the exact value, gamma_k = k u / (1 - k u), u = 2^-24 (Higham,
  Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1). Two evaluations differ by at most
  twice that: ``sum_bound``.
- A whole network (a U-Net, a text encoder, a VAE): its rounding is measured instead of bounded, as the float32
  evaluation's distance from the same computation in float64 (``rounding``). Two float32 evaluations that differ
  only in the order of their sums (another batch size, merged instead of separate weights) are each about that
  far from the exact result, so by the triangle inequality about twice that from each other; ``NETWORK_FACTOR``
  allows twice more for one evaluation landing farther than the other. A real defect (a row with another row's
  LoRA weights, a LoRA left out) moves outputs by 1e-3 and more, far outside.
"""

from __future__ import annotations

import copy

import torch

U = 2.0 ** -24  # float32's unit roundoff
NETWORK_FACTOR = 4.0


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def sum_bound(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Elementwise bound on |x - y| for two float32 evaluations of sums of k products whose |terms| add up to
    ``magnitude`` (count a final scaling as one more product)."""
    return 2 * gamma(k) * magnitude


def rounding(f32: torch.Tensor, f64: torch.Tensor) -> float:
    """The float32 evaluation's largest distance from the float64 one: rounding at this computation's scale."""
    return float((f32.double() - f64).abs().max())


def assert_same_up_to_rounding(x: torch.Tensor, y: torch.Tensor, noise: float, what: str = "") -> None:
    """x and y are the same network's result by two float32 paths; ``noise`` is ``rounding`` of one of them."""
    diff = float((x.double() - y.double()).abs().max())
    assert noise > 0, "a float32 result equal to float64 everywhere: the reference was not computed in float64"
    assert diff <= NETWORK_FACTOR * noise, f"{what}: differ by {diff:.3g}, float32 rounding here is {noise:.3g}"


def in_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a model (hooks and LoRA layers included) for the reference evaluation."""
    return copy.deepcopy(module).double()


def delta_bound(*modules) -> torch.Tensor:
    """``sum_bound`` for a LoRA module's delta, scale x up @ down (``dim`` products and the scaling), or for the
    mean of several modules' deltas: all their products, plus the scalings, the sum and the division by k."""
    mag = sum(abs(m.scale) * (m.up.float().flatten(1).abs() @ m.down.float().flatten(1).abs()) for m in modules)
    extra = 1 if len(modules) == 1 else 4
    shape = (modules[0].up.shape[0], *modules[0].down.shape[1:])
    return sum_bound(mag / len(modules), sum(m.dim for m in modules) + extra).reshape(shape)
