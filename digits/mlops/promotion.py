"""The promotion rule: when a new registered version takes ``champion`` from the current one, and why, in one line.

A version is compared on what the served model answers: its digit accuracy on the test set (tag ``test_accuracy``)
and, when it carries the line reader, its exact match on numbers made of test digits (tag
``test_number_exact_match``). It becomes champion when it beats the champion's digit accuracy and does not lose on
numbers; a candidate that loses on either stays ``challenger``. A champion registered before numbers were measured
is compared on digits alone, said in the reason. Pure: no MLflow calls, so every branch is unit-tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

TAG_ACCURACY = "test_accuracy"
TAG_NUMBERS = "test_number_exact_match"

__all__ = ["TAG_ACCURACY", "TAG_NUMBERS", "decide", "tag_value"]


def tag_value(tags: Mapping[str, str], key: str) -> float | None:
    """A figure stored as a version tag, or None when it is absent or not a finite number."""
    try:
        value = float(tags.get(key, "nan"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _figures(accuracy: float, numbers: float | None) -> str:
    return f"test_accuracy {accuracy:.4f}" + (f", number exact match {numbers:.4f}" if numbers is not None else "")


def decide(
    version: int, accuracy: float, numbers: float | None, champion: tuple[str, Mapping[str, str]] | None
) -> tuple[bool, str]:
    """Whether ``version`` (its digit ``accuracy`` and number exact match ``numbers``, None without a line reader)
    takes ``champion`` from ``champion`` (its version and tags; None: there is none), and the reason."""
    mine = f"version {version} ({_figures(accuracy, numbers)})"
    if champion is None:
        return True, f"{mine} is the first champion"
    number, tags = champion
    best, best_numbers = tag_value(tags, TAG_ACCURACY), tag_value(tags, TAG_NUMBERS)
    if best is None:
        return False, (
            f"{mine} is challenger: champion version {number} has no {TAG_ACCURACY} tag to compare with; "
            "promote by hand with `digits register`"
        )
    theirs = f"champion version {number} ({_figures(best, best_numbers)})"
    if accuracy <= best:
        return False, f"{mine} does not beat {theirs} on digits: challenger, not promoted"
    if best_numbers is not None and (numbers is None or numbers < best_numbers):
        return False, f"{mine} beats {theirs} on digits but loses on numbers: challenger, not promoted"
    also = "" if best_numbers is not None else " (the champion has no number figure: compared on digits)"
    return True, f"{mine} beats {theirs}: now champion{also}"
