"""Argument types that validate themselves: used in signatures, so the command line checks them when it
parses.

``def f(batch_size: PositiveInt = 8)``: to Python the annotation is documentation (the value is a plain int);
the ``mop`` command line and ``mop train`` (jsonargparse, see :func:`register`) convert and check every value
given for such a parameter, and a bad one is refused with one line (``--batch-size: must be positive, got 0``)
before anything is loaded. The parsed value is always a plain ``int`` / ``float`` (checkpoints stay loadable
with ``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _checker(kind: type, what: str, ok: Callable[[float], bool], rule: str) -> Callable[[object], float]:
    """A parser for one type: ``kind(value)`` if it is a finite number (a whole one for int) for which ``ok``
    holds; otherwise ValueError("expected WHAT, got ...") or ValueError("RULE, got ...")."""

    def check(value):
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)
                                           and not value.is_integer()):
                raise ValueError
            number = kind(value)
            if not math.isfinite(number):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"expected {what}, got {value!r}") from None
        if not ok(number):
            raise ValueError(f"{rule}, got {number:g}")
        return number

    return check


class PositiveInt(int):
    """An integer > 0."""

    check = staticmethod(_checker(int, "a positive integer", lambda n: n > 0, "must be positive"))


class NonNegativeInt(int):
    """An integer >= 0."""

    check = staticmethod(_checker(int, "an integer >= 0", lambda n: n >= 0, "must be >= 0"))


class PositiveFloat(float):
    """A finite number > 0."""

    check = staticmethod(_checker(float, "a positive number", lambda x: x > 0, "must be positive"))


class NonNegativeFloat(float):
    """A finite number >= 0."""

    check = staticmethod(_checker(float, "a number >= 0", lambda x: x >= 0, "must be >= 0"))


class Probability(float):
    """A number in (0, 1]."""

    check = staticmethod(_checker(float, "a number in (0, 1]", lambda x: 0 < x <= 1, "must be in (0, 1]"))


TYPES = (PositiveInt, NonNegativeInt, PositiveFloat, NonNegativeFloat, Probability)


def register() -> None:
    """Teach jsonargparse these types (idempotent): parse with ``check``, keep plain numbers."""
    from jsonargparse.typing import register_type, registered_types

    for kind in TYPES:
        if kind not in registered_types:
            register_type(kind, serializer=lambda v: v, deserializer=kind.check)
