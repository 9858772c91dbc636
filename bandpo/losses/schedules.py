"""Schedules of a bounds setting over training steps (e.g. the band radius δ): ``schedule(step) -> float``.

A bounds rule's ``delta`` may be a number, a :class:`Schedule`, or any callable ``step -> float``; the trainer
passes the RL step (``policy_loss(..., step=k)``). ``step`` counts from 0. Every schedule holds ``end`` after
``steps`` steps:

* :class:`Constant`: ``value`` at every step;
* :class:`Linear`: ``start + (end - start)·min(step / steps, 1)``;
* :class:`Cosine`: ``end + (start - end)·(1 + cos(π·min(step / steps, 1)))/2``.

:meth:`Schedule.value_range` gives the lowest and highest value over the steps a run will ask for (or over every
step), so a setting can be checked over its whole range before training starts (``Band`` refuses a δ schedule
that reaches 0 or below at any step) instead of failing at the step where it leaves the range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..registry import Registry

__all__ = ["Constant", "Cosine", "Linear", "SCHEDULES", "Schedule", "make_schedule", "resolve_setting"]


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Schedule:
    """Base class: a value per training step. Subclasses implement ``at(step: int) -> float``."""

    def at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"a schedule's step must be an integer >= 0, got {step!r}")
        return self.at(int(step))

    def value_range(self, steps: Optional[int] = None) -> "tuple[float, float]":
        """``(lowest, highest)`` value over steps ``0 .. steps - 1`` (None: over every step >= 0).

        The base class evaluates every step (so ``steps`` is needed); the built-in schedules answer in closed form.
        """
        if steps is None:
            raise ValueError(f"{type(self).__name__} cannot bound its values over every step; pass steps=")
        _check_steps(steps)
        values = [self(s) for s in range(steps)]
        return min(values), max(values)


def _check_finite(name: str, x) -> None:
    if not (_is_real(x) and math.isfinite(x)):
        raise ValueError(f"{name} must be a finite number, got {x!r}")


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"a schedule's steps must be an integer >= 1, got {steps!r}")


@dataclass(frozen=True)
class Constant(Schedule):
    """``value`` at every step."""

    value: float
    """The value."""

    def __post_init__(self) -> None:
        _check_finite("Constant value", self.value)

    def at(self, step: int) -> float:
        return float(self.value)

    def value_range(self, steps: Optional[int] = None) -> "tuple[float, float]":
        return float(self.value), float(self.value)


@dataclass(frozen=True)
class _Ramp(Schedule):
    """From ``start`` at step 0 to ``end`` at step ``steps`` (``t = min(step / steps, 1)``); ``end`` afterwards.
    The fields and their checks; subclasses give the path in ``at``."""

    start: float
    """Value at step 0."""
    end: float
    """Value from step ``steps`` on."""
    steps: int
    """Steps of the ramp (>= 1)."""

    def __post_init__(self) -> None:
        _check_finite(f"{type(self).__name__} start", self.start)
        _check_finite(f"{type(self).__name__} end", self.end)
        _check_steps(self.steps)

    def _t(self, step: int) -> float:
        return min(step / self.steps, 1.0)

    def value_range(self, steps: Optional[int] = None) -> "tuple[float, float]":
        """Both ramps are monotone from ``start`` to ``end``: the extremes are at step 0 and at the last step asked
        for (``end`` itself when every step is)."""
        if steps is not None:
            _check_steps(steps)
        first, last = self.at(0), (float(self.end) if steps is None else self.at(steps - 1))
        return min(first, last), max(first, last)


@dataclass(frozen=True)
class Linear(_Ramp):
    """From ``start`` at step 0 to ``end`` at step ``steps``, linearly; ``end`` afterwards."""

    def at(self, step: int) -> float:
        return float(self.start + (self.end - self.start) * self._t(step))


@dataclass(frozen=True)
class Cosine(_Ramp):
    """From ``start`` at step 0 to ``end`` at step ``steps`` along a half cosine; ``end`` afterwards."""

    def at(self, step: int) -> float:
        return float(self.end + (self.start - self.end) * (1 + math.cos(math.pi * self._t(step))) / 2)


SCHEDULES: Registry[Callable[..., Schedule]] = Registry("schedule")
"""Schedule kinds by the name used in configs (``loss.delta_schedule``)."""
SCHEDULES.register("constant", lambda start, end=None, steps=None: Constant(start))
SCHEDULES.register("linear", Linear)
SCHEDULES.register("cosine", Cosine)


def make_schedule(kind: str, start: float, end: Optional[float] = None, steps: Optional[int] = None) -> Schedule:
    """A schedule from its config spelling: ``make_schedule("linear", 0.05, 0.1, 100)``."""
    build = SCHEDULES.get(kind)
    if kind != "constant" and (end is None or steps is None):
        raise ValueError(f"a {kind!r} schedule needs an end value and a number of steps, got end={end!r}, steps={steps!r}")
    return build(start, end, steps)


Setting = Union[float, Schedule, Callable[[int], float]]


def resolve_setting(name: str, value: Setting, step: Optional[int]) -> float:
    """The value of a setting at ``step``: a number as is, a schedule or callable evaluated at ``step``.

    Raises:
        ValueError: a schedule/callable without ``step`` (one line, naming the setting).
    """
    if _is_real(value):
        return float(value)
    if step is None:
        raise ValueError(f"{name} is a schedule ({value!r}): pass step= (the training step) to evaluate it")
    out = value(step)
    if not _is_real(out):
        raise ValueError(f"{name} schedule returned {out!r} at step {step}, expected a number")
    return float(out)
