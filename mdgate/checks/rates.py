"""Failure rates over trajectories, decided with confidence.

A molecule's MD stage is a binomial experiment: each trajectory fails (a required check crossed
its bound) or survives. :func:`decide_rate` tests the failure rate against two rates of
:class:`~mdgate.config.RateSettings`: the molecule fails when the rate's Wilson interval lies above
the acceptable rate, passes when it lies below the unacceptable rate, and is undecided between,
when more replicas run (:func:`more_replicas`). No failure at all
passes. :func:`operating_characteristic` gives, for a true
failure rate, the probabilities of each outcome and the expected trajectories of that procedure
(exact, by enumerating the binomial outcomes of each round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

from mdgate.config import RateSettings


class RateDecision(StrEnum):
    """A molecule's outcome in an MD stage."""

    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval of a binomial rate with ``k`` events in ``n`` trials.

    Raises:
        ValueError: ``n`` < 1 or ``k`` outside 0…n.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def decide_rate(k: int, n: int, rates: RateSettings) -> RateDecision:
    """Fail when the interval lies above the acceptable rate (checked first: a rate shown too
    high always fails), pass when it lies below the unacceptable rate, else undecided.

    A molecule none of whose trajectories failed passes whatever their number (confirmation comes
    before a rejection, not before an approval): a profile of one replica per molecule approves
    as it did without rates, and its interval says how little that shows.
    """
    if n == 0:
        return RateDecision.UNDECIDED
    if k == 0:
        return RateDecision.PASS
    low, high = wilson_interval(k, n, rates.confidence)
    if low > rates.acceptable_failure_rate:
        return RateDecision.FAIL
    if high < rates.unacceptable_failure_rate:
        return RateDecision.PASS
    return RateDecision.UNDECIDED


def more_replicas(n: int, rates: RateSettings) -> int:
    """Replicas to add to an undecided molecule that has ``n`` (0 at the cap)."""
    return max(0, min(rates.batch_replicas, rates.max_replicas - n))


@dataclass(frozen=True)
class OperatingPoint:
    """What the procedure does with a molecule whose true failure rate is ``rate``."""

    rate: float
    p_fail: float
    p_pass: float
    p_undecided: float
    expected_trajectories: float


def operating_characteristic(rate: float, first: int, rates: RateSettings) -> OperatingPoint:
    """Exact outcome probabilities of the sequential procedure (``first`` trajectories, then
    rounds of ``batch_replicas`` up to ``max_replicas``) for a true failure rate ``rate``.
    """
    states, n = {0: 1.0}, 0
    p_fail = p_pass = spent = 0.0
    size = first
    while states and size > 0:
        grown: dict[int, float] = {}
        for k, q in states.items():
            for j in range(size + 1):
                grown[k + j] = grown.get(k + j, 0.0) + q * math.comb(size, j) * rate**j * (1 - rate) ** (size - j)
        n += size
        states = {}
        for k, q in grown.items():
            outcome = decide_rate(k, n, rates)
            if outcome == RateDecision.UNDECIDED:
                states[k] = q
                continue
            spent += q * n
            if outcome == RateDecision.FAIL:
                p_fail += q
            else:
                p_pass += q
        size = more_replicas(n, rates)
    left = sum(states.values())
    return OperatingPoint(rate, p_fail, p_pass, left, spent + left * n)
