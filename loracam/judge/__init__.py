"""Judging results: identity similarity to the person's photos, picking (and averaging) checkpoints, and
ranking candidate images (filters, identity, quality, adherence, aesthetics: loracam.judge.rank)."""

from loracam.judge.identity import IdentityScore, IdentityScorer, similarity
# The ranking module loads before select, whose ``rank`` function then takes the package attribute ``rank``
# for good (existing callers import that function from here); import the module's names by their full path,
# ``from loracam.judge.rank import judge_images`` (``import loracam.judge.rank as m`` would give the function).
from loracam.judge.rank import JudgeConfig, Judged, Ranking, judge_images, write_ranking
from loracam.judge.select import CheckpointScore, average_loras, curve_text, explain, pick, rank

__all__ = [
    "CheckpointScore", "IdentityScore", "IdentityScorer", "average_loras", "curve_text", "explain", "pick", "rank",
    "similarity",
    "JudgeConfig", "Judged", "Ranking", "judge_images", "write_ranking",
]
