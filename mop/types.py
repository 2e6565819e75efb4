"""Argument types that validate themselves: used in signatures, so the command line checks them when it parses.

``def f(batch_size: PositiveInt = 8)``: to Python the annotation is documentation (the value is a plain int);
the ``mop`` command line and ``mop train`` (jsonargparse, see :func:`register`) convert and check every value
given for such a parameter, and a bad one is refused with one line (``--batch-size: must be positive, got 0``)
before anything is loaded. The parsed value is always a plain ``int`` / ``float`` (checkpoints stay loadable
with ``weights_only=True``).
"""

from __future__ import annotations

import math


def _number(value, kind: type, what: str):
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {what}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected {what}, got {value!r}")
    if kind is float and not math.isfinite(number):
        raise ValueError(f"expected {what}, got {value!r}")
    return number


class PositiveInt(int):
    """An integer > 0."""

    @staticmethod
    def check(value) -> int:
        n = _number(value, int, "a positive integer")
        if n <= 0:
            raise ValueError(f"must be positive, got {n}")
        return n


class NonNegativeInt(int):
    """An integer >= 0."""

    @staticmethod
    def check(value) -> int:
        n = _number(value, int, "an integer >= 0")
        if n < 0:
            raise ValueError(f"must be >= 0, got {n}")
        return n


class PositiveFloat(float):
    """A finite number > 0."""

    @staticmethod
    def check(value) -> float:
        x = _number(value, float, "a positive number")
        if x <= 0:
            raise ValueError(f"must be positive, got {x:g}")
        return x


class NonNegativeFloat(float):
    """A finite number >= 0."""

    @staticmethod
    def check(value) -> float:
        x = _number(value, float, "a number >= 0")
        if x < 0:
            raise ValueError(f"must be >= 0, got {x:g}")
        return x


class Probability(float):
    """A number in (0, 1]."""

    @staticmethod
    def check(value) -> float:
        x = _number(value, float, "a number in (0, 1]")
        if not 0 < x <= 1:
            raise ValueError(f"must be in (0, 1], got {x:g}")
        return x


TYPES = (PositiveInt, NonNegativeInt, PositiveFloat, NonNegativeFloat, Probability)


def register() -> None:
    """Teach jsonargparse these types (idempotent): parse with ``check``, keep plain numbers."""
    from jsonargparse.typing import register_type, registered_types

    for kind in TYPES:
        if kind not in registered_types:
            register_type(kind, serializer=lambda v: v, deserializer=kind.check)
