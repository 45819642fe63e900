"""The weight search: per seed, the lightest LoRA weights at which every LoRA's concept is judged present.

The NGA guide sweeps a 3x3x3 grid of weights on a seed, then a finer one around its best cell (54 renders a
seed, and a person looking at each). The question it answers per LoRA is a threshold: the weight below which
the concept stops showing. A threshold is found by bisection, and the LoRAs' bisections run side by side:

- start: every LoRA at ``start`` (1.0). A concept missing there is tried at ``ceiling`` (1.5), and, in the
  same round, with each LoRA that does show halved (a heavy face LoRA can paint over a dress: "weights are
  relative") and with all of them at 0.7 and 0.4 (several LoRAs at 1.0 can spoil each other). Still missing
  in the best of those: one round that makes room for it (first it at 1.5 with every other LoRA at 0.4, then
  it at 1.0 or 0.7 with the others at 0.4 or 0.7), as far as the budget leaves a search after it. What the best of all those renders lacks is "not reached at
  weight 1.5" (with every weight tried), said and left where it is, never a silent maximum; the search goes
  on for the rest.
- scale: all LoRAs together, by bisection on one factor, to the lightest that still shows what the best
  render showed.
- rounds: from the current point (verified: it showed every reachable concept), each LoRA still converging moves to the
  middle of its interval [known bad, current], all in one batch. A move that still shows every concept lowers
  that LoRA's top; one that loses any raises its bottom. Several moves that worked combine into the next
  point, which is rendered with the next round's moves (it is verified there; if it fails, the search goes
  back to the last verified point and from then on takes one move per round).
- the answer: among every render that showed all concepts, the lightest (sum of weights) whose prior (how
  well the rest of the prompt is followed) is within ``prior_tolerance`` of the best prior seen there.

Bisection assumes a concept shows at all weights above its threshold (the toy LoRAs break that: myshoes read
at 0.7 and lost at 1.0, benchmarks/README.md toy_tune); the judged renders are all kept, so the answer is
always a render that was seen to work, never an interpolation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

from loracam.errors import LoracamError


@dataclass(frozen=True)
class SearchConfig:
    start: float = 1.0  # every LoRA's first weight: the top of its interval
    ceiling: float = 1.5  # a concept missing at start is tried here once
    floor: float = 0.0  # the bottom of every interval: known to show nothing, never rendered
    budget: int = 18  # renders per seed for the search (the guide's grids: 54)
    precision: float = 0.01  # weights are multiples of this
    prior_tolerance: float = 0.05  # the answer's prior may be this far below the best prior among working renders

    def __post_init__(self) -> None:
        if not 0 <= self.floor < self.start <= self.ceiling:
            raise LoracamError(f"weights must satisfy 0 <= floor < start <= ceiling (got {self.floor}, {self.start}, "
                               f"{self.ceiling})")
        if self.precision <= 0:
            raise LoracamError("the weight precision must be positive")


def min_budget(n_loras: int) -> int:
    """The fewest renders a seed needs: the start, a rescue round (n + 2 renders) and two rounds more."""
    return n_loras + 5


def check_budget(budget: int, n_loras: int) -> None:
    need = min_budget(n_loras)
    if budget < need:
        raise LoracamError(f"a budget of {budget} renders a seed is too small for {n_loras} LoRA"
                           f"{'s' if n_loras != 1 else ''}: give --budget {need} or more (the start, a round that "
                           f"tries each LoRA heavier or lighter and all lighter, and two rounds of search); 6 per LoRA is a good "
                           f"search")


@dataclass(frozen=True)
class Reading:
    """What the judges saw in one render."""

    fidelity: tuple[float, ...]  # per LoRA, 0-1: how strongly its concept shows
    present: tuple[bool, ...]  # per LoRA: the judge's verdict
    prior: float | None = None  # 0-1: the rest of the prompt followed (None: no prior judge)

    @property
    def min_fidelity(self) -> float:
        return min(self.fidelity) if self.fidelity else 1.0


@dataclass(frozen=True)
class Trial:
    weights: tuple[float, ...]
    reading: Reading
    round: int
    kind: str  # start, ceiling, lighter:I, scaled:F, explore, scale, move:I, combined (see the module docstring)


@dataclass
class SeedResult:
    seed: int
    weights: tuple[float, ...]  # the answer
    reading: Reading
    trials: list[Trial]
    unreached: tuple[int, ...]  # LoRAs whose concept the best render of the start and rescue rounds lacked
    ok: bool  # the answer shows every reachable concept

    @property
    def renders(self) -> int:
        """Distinct renders (a point proposed twice is rendered once)."""
        return len({t.weights for t in self.trials})


# (seed, weights) per render, in; one Reading per render, out (in order). Renders in batches as it likes.
Evaluate = Callable[[Sequence[tuple[int, tuple[float, ...]]]], list[Reading]]


def _snap(w: float, cfg: SearchConfig) -> float:
    return round(round(w / cfg.precision) * cfg.precision, 6)


RESCUE_SCALES = (0.7, 0.4)  # the guide's grid values below 1.0
EXPLORE_MISSING = (1.0, 0.7)  # making room for a missing concept: it heavier ...
EXPLORE_SHOWN = (0.4, 0.7)  # ... the shown ones lighter (factors of ``start``)
DIAGONAL_STEP = 1 / 16  # the scale search stops at this resolution when per-LoRA moves follow


@dataclass
class _Seed:
    """One seed's search: start -> (rescue) -> scale (all LoRAs together) -> moves (each LoRA alone)."""

    seed: int
    n: int
    cfg: SearchConfig
    point: tuple[float, ...] = ()
    lo: list[float] = field(default_factory=list)
    lo_others: list[float] = field(default_factory=list)  # the other LoRAs' weight sum when lo[i] was measured
    verified: bool = False
    last_verified: tuple[float, ...] | None = None
    single: bool = False  # after a combined point failed: one move per round
    unreached: set[int] = field(default_factory=set)
    trials: list[Trial] = field(default_factory=list)
    phase: str = "start"
    scale: tuple[float, float] = (0.0, 1.0)  # the scale phase's (known bad, known good) factors of ``anchor``
    anchor: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.point = (self.cfg.start,) * self.n
        self.lo = [self.cfg.floor] * self.n
        self.lo_others = [float("-inf")] * self.n  # the floor shows nothing whatever the others weigh

    def ok(self, r: Reading) -> bool:
        return all(p for i, p in enumerate(r.present) if i not in self.unreached)

    # -- proposals ---------------------------------------------------------------------------------------------

    def proposals(self, left: int) -> list[tuple[str, tuple[float, ...]]]:
        """This round's renders, none if the budget ``left`` cannot pay for a useful round."""
        if self.phase == "start":
            return [("start", self.point)]
        if self.phase == "rescue":
            return self._rescue()
        if self.phase == "explore":
            return self._explore(self._best_seen()[1])
        if self.phase == "scale":
            return [("scale", self._scaled(sum(self.scale) / 2))]
        if self.phase == "done":
            return []
        props = [] if self.verified else [("combined", self.point)]
        moves = self.moves()
        if not moves:
            return props  # converged: only the combined point is left to see
        if self.single:
            moves = moves[:1]
        if len(props) + len(moves) + (0 if len(moves) == 1 else 1) > left:
            # not enough left for the moves and a look at where they lead: see the combined point only
            return props if props and left >= 1 else []
        return props + moves

    def _rescue(self) -> list[tuple[str, tuple[float, ...]]]:
        """After a start that lost a concept: the missing ones heavier, each shown one halved (a heavy LoRA can
        paint over another's concept), and everything lighter (several LoRAs at 1.0 can cook each other's)."""
        missing = [i for i, p in enumerate(self.trials[-1].reading.present) if not p]
        shown = [i for i in range(self.n) if i not in missing]
        heavier = tuple(self.cfg.ceiling if i in missing else w for i, w in enumerate(self.point))
        out = [("ceiling", heavier)]
        for i in shown:
            out.append((f"lighter:{i}", tuple(_snap(w / 2, self.cfg) if j == i else w for j, w in enumerate(self.point))))
        for f in RESCUE_SCALES:
            out.append((f"scaled:{f:g}", tuple(max(self.cfg.floor, _snap(w * f, self.cfg)) for w in self.point)))
        return out

    def _scaled(self, factor: float) -> tuple[float, ...]:
        """``anchor`` with every reachable LoRA scaled by ``factor`` (unreached ones stay where they are)."""
        return tuple(w if i in self.unreached else max(self.cfg.floor, _snap(w * factor, self.cfg))
                     for i, w in enumerate(self.anchor))

    def reopen(self) -> None:
        """Weights are relative: a bottom measured while the other LoRAs were heavier may work now. It is scaled
        by how much lighter they are (a guess, not a measurement: it is not lowered again until measured)."""
        for i in range(self.n):
            others = sum(self.point) - self.point[i]
            then = self.lo_others[i]
            if i not in self.unreached and others < then - 1e-9:
                self.lo[i] = max(self.cfg.floor, _snap(self.lo[i] * others / then, self.cfg))
                self.lo_others[i] = float("-inf")

    def moves(self) -> list[tuple[str, tuple[float, ...]]]:
        out = []
        self.reopen()
        for i in range(self.n):
            if i in self.unreached:
                continue
            mid = _snap((self.lo[i] + self.point[i]) / 2, self.cfg)
            if self.point[i] - self.lo[i] <= self.cfg.precision * 1.5 or mid in (self.point[i], self.lo[i]):
                continue
            out.append((f"move:{i}", tuple(mid if j == i else w for j, w in enumerate(self.point))))
        return out

    # -- what a round's readings teach ----------------------------------------------------------------------

    def absorb(self, got: list[tuple[str, tuple[float, ...], Reading]], round_no: int) -> None:
        self.trials += [Trial(w, r, round_no, k) for k, w, r in got]
        {"start": self._after_start, "rescue": self._after_rescue, "explore": self._after_explore,
         "scale": self._after_scale,
         "moves": self._after_round}[self.phase](got)

    def _verified_at(self, point: tuple[float, ...], next_phase: str) -> None:
        self.point, self.verified, self.last_verified, self.phase = point, True, point, next_phase
        if len(self.unreached) == self.n:  # nothing left to search
            self.phase = "done"
        elif next_phase == "scale":
            self.anchor, self.scale = point, (self.cfg.floor / max(point), 1.0)

    def _after_start(self, got) -> None:
        if self.ok(got[0][2]):
            self._verified_at(self.point, "scale")
        else:
            self.phase = "rescue"

    def _best_seen(self) -> tuple[tuple[float, ...], Reading]:
        """The render that showed the most concepts, then the lightest."""
        t = max(self.trials, key=lambda t: (sum(t.reading.present), -sum(t.weights), t.weights))
        return t.weights, t.reading

    def _after_rescue(self, got) -> None:
        """Search on from the render that showed the most concepts (then the lightest); with some missing, first
        one round that makes room for them (the missing heavier, the others lighter), if the budget allows."""
        _, reading = self._best_seen()
        if not all(reading.present) and self._explore(reading):
            self.phase = "explore"
            return
        self._anchor_on_best()

    def _explore(self, reading: Reading) -> list[tuple[str, tuple[float, ...]]]:
        missing = [i for i, p in enumerate(reading.present) if not p]
        tried = {t.weights for t in self.trials}
        # first each missing LoRA at the ceiling with every other one at the lightest level: whether its concept
        # can show at all beside the others (in the toy world a dress LoRA at 1.1 needs the shoes at 0.5)
        light = _snap(self.cfg.start * EXPLORE_SHOWN[0], self.cfg)
        solo = [tuple(self.cfg.ceiling if j == i else light for j in range(self.n)) for i in missing] if self.n > 1 else []
        levels = [EXPLORE_MISSING if i in missing else EXPLORE_SHOWN for i in range(self.n)]
        combos = solo + [tuple(_snap(self.cfg.start * f, self.cfg) for f in c) for c in itertools.product(*levels)]
        combos = [c for c in dict.fromkeys(combos) if c not in tried]
        room = self.cfg.budget - len(tried) - (self.n + 1)  # leave a search round after it
        return [("explore", c) for c in combos[:max(0, room)]]

    def _after_explore(self, got) -> None:
        self._anchor_on_best()

    def _anchor_on_best(self) -> None:
        """What the best render does not show was not seen with the rest at any weight tried: reported, and
        left where it is."""
        point, reading = self._best_seen()
        self.unreached |= {i for i, p in enumerate(reading.present) if not p}
        for i in self.unreached:
            self.lo[i] = point[i]  # frozen, said in the result
        self._verified_at(point, "scale")

    def _after_scale(self, got) -> None:
        kind, w, r = got[0]
        lo, hi = self.scale
        mid = (lo + hi) / 2
        if self.ok(r):
            self.scale, self.point, self.last_verified = (lo, mid), w, w
        else:
            self.scale = (mid, hi)
            for i, p in enumerate(r.present):  # a concept lost with every LoRA lighter is lost with them heavier
                if not p and i not in self.unreached:
                    self.lo[i], self.lo_others[i] = w[i], sum(w) - w[i]
        reachable = self.n - len(self.unreached)
        resolution = self.cfg.precision if reachable == 1 else DIAGONAL_STEP
        if self.scale[1] - self.scale[0] <= resolution or self._scaled(sum(self.scale) / 2) in (
                self.point, self._scaled(self.scale[0])):
            self.phase = "moves" if reachable > 1 else "done"

    def _after_round(self, got) -> None:
        if got and got[0][0] == "combined":
            kind, w, r = got[0]
            got = got[1:]
            if self.ok(r):
                self.verified, self.last_verified = True, w
            else:  # the moves of this round started from a point that fails: undo, then one move at a time
                self.point, self.verified, self.single = self.last_verified, True, True
                if not got:
                    self.phase = "done"
                return
        if not got:
            self.phase = "done"
            return
        base = self.point
        worked = []
        for kind, w, r in got:
            i = int(kind.split(":")[1])
            if self.ok(r):
                worked.append(i)
            else:
                self.lo[i], self.lo_others[i] = w[i], sum(w) - w[i]
        if not worked:
            return
        self.point = tuple(next(w[i] for k, w, r in got if k == f"move:{i}") if i in worked else base[i]
                           for i in range(self.n))
        if len(worked) == 1:  # a single move was rendered as it is: verified
            self.verified, self.last_verified = True, self.point
        else:
            self.verified = False


def search(seeds: Sequence[int], n_loras: int, evaluate: Evaluate, cfg: SearchConfig = SearchConfig(),
           on_round: Callable[[int, int], None] | None = None) -> list[SeedResult]:
    """Run the seeds' searches side by side, one batch of renders per round; see the module docstring."""
    check_budget(cfg.budget, n_loras)
    states = [_Seed(s, n_loras, cfg) for s in seeds]
    round_no = 0
    while True:
        asks = [(st, st.proposals(cfg.budget - _spent(st))) for st in states]
        asks = [(st, p) for st, p in asks if p and _spent(st) + len(p) <= cfg.budget]
        if not asks:
            break
        flat = [(st.seed, w) for st, props in asks for _, w in props]
        readings = evaluate(flat)
        if len(readings) != len(flat):
            raise RuntimeError(f"the judge returned {len(readings)} readings for {len(flat)} renders")
        it = iter(readings)
        for st, props in asks:
            st.absorb([(k, w, next(it)) for k, w in props], round_no)
        round_no += 1
        if on_round:
            on_round(round_no, sum(len(st.trials) for st in states))
    return [_result(st, cfg) for st in states]


def _spent(st: _Seed) -> int:
    return len({t.weights for t in st.trials})


def _result(st: _Seed, cfg: SearchConfig) -> SeedResult:
    return SeedResult(st.seed, *choose(st.trials, st.ok, cfg.prior_tolerance, st.unreached), st.trials,
                      tuple(sorted(st.unreached)),
                      ok=any(st.ok(t.reading) for t in st.trials))


def choose(trials: Sequence[Trial], ok: Callable[[Reading], bool], tolerance: float,
           unreached: set[int] | frozenset = frozenset()) -> tuple[tuple, Reading]:
    """The answer among ``trials``: the lightest working render within ``tolerance`` of the best prior there;
    with none working, the render that showed the most concepts (then the highest weakest fidelity). Lightest
    counts the reachable LoRAs only; of those equal, the one with unreached LoRAs heaviest (tried hardest)."""
    working = [t for t in trials if ok(t.reading)]
    if not working:
        best = max(trials, key=lambda t: (sum(t.reading.present), t.reading.min_fidelity, -sum(t.weights)))
        return best.weights, best.reading
    priors = [t.reading.prior for t in working if t.reading.prior is not None]
    bar = max(priors) - tolerance if priors else None
    kept = [t for t in working if bar is None or (t.reading.prior is not None and t.reading.prior >= bar - 1e-9)]
    def key(t: Trial):
        light = sum(w for i, w in enumerate(t.weights) if i not in unreached)
        return round(light, 6), -sum(t.weights[i] for i in unreached), -t.reading.min_fidelity, t.weights

    best = min(kept, key=key)
    return best.weights, best.reading
