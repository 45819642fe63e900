"""Judging results: identity similarity to the person's photos, and picking (and averaging) checkpoints."""

from loracam.judge.identity import IdentityScore, IdentityScorer, similarity
from loracam.judge.select import CheckpointScore, average_loras, curve_text, explain, pick, rank

__all__ = [
    "CheckpointScore", "IdentityScore", "IdentityScorer", "average_loras", "curve_text", "explain", "pick", "rank",
    "similarity",
]
