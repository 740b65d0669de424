"""The tier rule that tests/conftest.py enforces at collection: each test carries exactly one of unit, data, e2e."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import TIERS, tier_problems

pytestmark = pytest.mark.unit


def fake_item(nodeid: str, *marks: str) -> SimpleNamespace:
    """What tier_problems reads of a collected test: its id and its markers (module, class and own, in any order)."""
    return SimpleNamespace(nodeid=nodeid, iter_markers=lambda: [SimpleNamespace(name=m) for m in marks])


def test_one_tier_each_passes_whatever_else_a_test_is_marked_with():
    items = [fake_item(f"t.py::{tier}", tier, "parametrize", "filterwarnings") for tier in TIERS]
    items.append(fake_item("t.py::twice", "unit", "unit"))  # module pytestmark and a decorator saying the same
    assert tier_problems(items) == []


def test_no_tier_or_two_tiers_is_a_problem_named_by_test():
    items = [
        fake_item("t.py::none", "parametrize"),
        fake_item("t.py::both", "e2e", "data"),
        fake_item("t.py::ok", "data"),
    ]
    assert tier_problems(items) == ["t.py::none: no tier marker", "t.py::both: tiers data and e2e"]


def test_this_test_has_exactly_one_tier(request):
    assert [m.name for m in request.node.iter_markers() if m.name in TIERS] == ["unit"]
    assert tier_problems([request.node]) == []
