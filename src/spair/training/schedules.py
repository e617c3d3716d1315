"""Schedules owned by the trainer: count-prior odds, training wheels, gradient noise, learning rate.

A schedule is a small object with ``value(step)``; its parameters are part of the training config and
the current step is part of the checkpoint, so a resumed run continues every schedule exactly.
``Exponential`` reproduces the authors' ``Exp(start, end, decay_rate, decay_steps, log, staircase)``
(spec sections 4.2 and 6):

    value(t) = (start − end) · decay_rate^(t / decay_steps) + end     (⌊t / decay_steps⌋ if staircase)

and with ``log=True`` the log of that value (plus 1e-6) is returned: the count prior uses it to turn
odds into log-odds, κ_t = log(odds_t + 1e−6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Exponential:
    start: float
    end: float
    decay_rate: float
    decay_steps: float
    log: bool = False
    staircase: bool = False

    def value(self, step: int) -> float:
        e = step / self.decay_steps if self.decay_steps > 0 else math.inf
        if self.staircase:
            e = math.floor(e)
        factor = self.decay_rate ** e if e != math.inf else 0.0
        v = (self.start - self.end) * factor + self.end
        return math.log(v + 1e-6) if self.log else v


@dataclass(frozen=True)
class Step:
    """``before`` for steps < ``at``, then ``after`` (the authors' training wheels: 1 then 0)."""

    before: float
    after: float
    at: int

    def value(self, step: int) -> float:
        return self.before if step < self.at else self.after


@dataclass(frozen=True)
class Constant:
    v: float

    def value(self, step: int) -> float:
        return self.v


@dataclass(frozen=True)
class LinearRamp:
    """Linear from ``start`` to ``end`` over ``steps``, then ``end`` (a smooth training-wheels option)."""

    start: float
    end: float
    steps: int

    def value(self, step: int) -> float:
        if self.steps <= 0 or step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.steps
