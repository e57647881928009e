"""The distributions the workload generators draw from, fitted to published quantiles.

A tool latency or a token count is a lognormal (`Lognormal`) fixed by two published numbers
(p95 and p99, or a median and a spread), or, for heavy tails whose mode a single lognormal
cannot keep, a body plus a slow tail (`LognormalMixture`). The helpers below turn a draw into
what a trace holds: a token count of at least 1, a duration at the trace's millisecond
resolution, Poisson arrival times. Every generator's parameters live in its own module.

swe.py draws its lognormals from (median, sigma) pairs of its own: it scales a token median
inside the log (median x verbosity), where `draw_tokens` scales the draw, which differs in the
last bit and would change its bundled trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()
Z95 = _NORMAL.inv_cdf(0.95)  # provenance: definition — z-score of the standard normal (1.6449)
Z99 = _NORMAL.inv_cdf(0.99)  # provenance: definition — z-score of the standard normal (2.3263)
# provenance: definition — the trace's resolution (ms); no tool call takes zero time
TOOL_S_MIN = 0.001


@dataclass(frozen=True, slots=True)
class Lognormal:
    """A lognormal by its median and sigma (the sd of its log)."""

    median: float
    sigma: float

    @classmethod
    def through(cls, p95: float, p99: float) -> Lognormal:
        """The lognormal whose p95 and p99 are the given ones: sigma = ln(p99/p95)/(z99 − z95)."""
        sigma = math.log(p99 / p95) / (Z99 - Z95)
        return cls(p95 / math.exp(Z95 * sigma), sigma)

    @classmethod
    def from_mode(cls, mode: float, sigma: float) -> Lognormal:
        """The lognormal with this mode (mode = median·e^(−σ²))."""
        return cls(mode * math.exp(sigma * sigma), sigma)

    def cdf(self, x: float) -> float:
        return _NORMAL.cdf(math.log(x / self.median) / self.sigma)

    def quantile(self, q: float) -> float:
        return self.median * math.exp(self.sigma * _NORMAL.inv_cdf(q))

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.lognormal(math.log(self.median), self.sigma))


@dataclass(frozen=True, slots=True)
class LognormalMixture:
    """A body lognormal and, with probability `tail_weight`, a slow tail lognormal.

    Heavy-tailed tool latencies (a mode of a few seconds, a p99 of minutes) do not fit one
    lognormal: through p95 and p99 alone its mode lands at milliseconds. A body fixed by the
    mode (or an ASSUMPTION) plus a tail fitted to p95 and p99 keeps all three.
    """

    body: Lognormal
    tail: Lognormal
    tail_weight: float

    @classmethod
    def through(
        cls, p95: float, p99: float, body: Lognormal, tail_weight: float
    ) -> LognormalMixture:
        """Fit the tail so that the mixture's p95 and p99 are exactly the given ones.

        Mixture CDF F(q) = (1 − w)·F_body(q) + w·F_tail(q); at q = p95 and q = p99 each
        equation fixes F_tail at one point, F_tail(q) = (F(q) − (1 − w)·F_body(q)) / w, so
        the tail's z-scores there are known, and sigma = ln(p99/p95)/(z_b − z_a),
        median = p95·e^(−z_a·sigma), in closed form.
        """
        w = tail_weight
        a = (0.95 - (1 - w) * body.cdf(p95)) / w
        b = (0.99 - (1 - w) * body.cdf(p99)) / w
        if not 0 < a < b < 1:
            raise ValueError(f"no tail of weight {w} fits p95 {p95} / p99 {p99} with {body}")
        za, zb = _NORMAL.inv_cdf(a), _NORMAL.inv_cdf(b)
        sigma = math.log(p99 / p95) / (zb - za)
        return cls(body, Lognormal(p95 / math.exp(za * sigma), sigma), w)

    def cdf(self, x: float) -> float:
        return (1 - self.tail_weight) * self.body.cdf(x) + self.tail_weight * self.tail.cdf(x)

    def quantile(self, q: float) -> float:
        """Inverse CDF by bisection on log x (for docs and tests; not in the hot loop)."""
        lo, hi = math.log(1e-6), math.log(1e6)
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.cdf(math.exp(mid)) < q else (lo, mid)
        return math.exp((lo + hi) / 2)

    def draw(self, rng: np.random.Generator) -> float:
        # Always two draws, so a program's stream stays aligned whichever component is chosen.
        slow = rng.random() < self.tail_weight
        return (self.tail if slow else self.body).draw(rng)


Distribution = Lognormal | LognormalMixture


def draw_tokens(rng: np.random.Generator, dist: Lognormal, cap: int, scale: float = 1.0) -> int:
    """A token count ≥ 1 from `dist` (median times `scale`), capped at `cap`."""
    return max(1, min(cap, round(scale * dist.draw(rng))))


def seconds(x: float, cap: float) -> float:
    """Clamp a duration to [TOOL_S_MIN, cap] and round it to the trace's resolution, so that
    dump -> load gives back an equal ProgramSpec."""
    return round(max(TOOL_S_MIN, min(cap, x)), 3)


def poisson_arrivals(n_programs: int, seed: int, per_min: float, stream: int = 0) -> list[float]:
    """Arrival times of a Poisson stream at `per_min`, the first at t = 0; prefix-stable."""
    rng = np.random.default_rng([seed, stream])
    gaps = rng.exponential(60.0 / per_min, size=n_programs)
    gaps[0] = 0.0
    return [round(float(t), 3) for t in np.cumsum(gaps)]
