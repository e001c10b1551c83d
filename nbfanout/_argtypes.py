"""Command-line value types shared by ``nbfanout`` and ``%%fanout`` (argparse ``type=``): each refuses
what a provider would refuse or misread, naming what it expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["positive_float", "positive_int", "temperature"]


def _number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], kind: str, allowed: str) -> Any:
    """``convert(text)`` if ``ok`` accepts it; else an error saying ``kind`` (unparsable) or ``allowed`` (out of range)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, found {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {allowed}, found {text.strip()}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a whole number", "a number above 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number of seconds", "a number above 0")  # NaN is not > 0


def temperature(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v <= 2.0, "a number from 0 to 2", "a number from 0 to 2")
