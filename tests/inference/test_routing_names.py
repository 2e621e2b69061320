"""Named routing modes (the table in hddm_core.inference.routing): Routing.from_name, labels, 'auto'."""
from __future__ import annotations

import pytest

from hddm_core.inference.routing import (ROUTING_NAMES, Routing, RoutingUnavailable, resolve_name, routing_label)
from hddm_core.pipeline.evaluation import routings_for

HETERO = ["eps", "velocity", "velocity"]


@pytest.mark.parametrize("name, expected", [
    ("top-1", Routing("top-k", k=1)),
    ("top-2", Routing("top-k", k=2)),
    ("full", Routing("full")),
    ("threshold", Routing("threshold", tau=0.3, low=(0,), high=(1, 2))),  # FM-first: FM experts at t > tau
    ("single", Routing("fixed", weights=(1.0, 1.0, 1.0))),
])
def test_from_name_builds_the_routing_each_name_means(name, expected):
    assert Routing.from_name(name, predictions=HETERO, has_router=True, tau=0.3) == expected


@pytest.mark.parametrize("name, predictions, has_router, why", [
    ("top-1", HETERO, False, "top-1: needs a router"),
    ("full", HETERO, False, "full: needs a router"),
    ("top-2", ["velocity"], True, "top-2: needs two experts"),
    ("threshold", ["velocity", "velocity"], False, "threshold: needs both DDPM and FM experts"),
])
def test_from_name_says_why_a_mode_does_not_apply(name, predictions, has_router, why):
    with pytest.raises(RoutingUnavailable, match=f"^{why}$"):
        Routing.from_name(name, predictions=predictions, has_router=has_router)


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown routing mode 'top-3'; valid: \['top-1', 'top-2', 'full', "
                                         r"'threshold', 'single'\]"):
        Routing.from_name("top-3", predictions=HETERO, has_router=True)


def test_x0_experts_are_grouped_with_the_ddpm_experts():
    """Every non-velocity prediction is on the DDPM side of the threshold split (as before the table)."""
    r = Routing.from_name("threshold", predictions=["x0", "velocity", "eps"], has_router=False, tau=0.4)
    assert (r.low, r.high, r.tau) == ((0, 2), (1,), 0.4)


@pytest.mark.parametrize("has_router, predictions, resolved", [
    (True, HETERO, "top-2"),
    (True, ["velocity"], "single"),  # one expert: top-2 does not apply
    (False, HETERO, "threshold"),
    (False, ["velocity", "velocity"], "single"),
    (False, ["eps"], "single"),
])
def test_auto_resolves_per_ensemble(has_router, predictions, resolved):
    assert resolve_name("auto", has_router=has_router, predictions=predictions) == resolved
    expected = Routing.from_name(resolved, predictions=predictions, has_router=has_router)
    assert Routing.from_name("auto", predictions=predictions, has_router=has_router) == expected


def test_labels_are_the_report_labels():
    assert [routing_label(n, tau=0.25, num_experts=3) for n in ROUTING_NAMES] == [
        "top-1", "top-2", "full", "threshold FM-first tau=0.25", "uniform mix"]
    assert routing_label("single", tau=0.25, num_experts=1) == "single expert"


class _Member:
    def __init__(self, prediction):
        from hddm_core.diffusion.conversion import ExpertDeclaration

        self.declaration = ExpertDeclaration(prediction, "linear", "continuous")


def test_evaluation_keeps_applicable_modes_and_lists_the_others():
    members = [_Member("velocity"), _Member("velocity")]
    out, skipped = routings_for(list(ROUTING_NAMES), members, has_router=False, tau=0.3)
    assert [(label, r.mode) for label, r in out] == [("uniform mix", "fixed")]
    assert skipped == ["top-1: needs a router", "top-2: needs a router", "full: needs a router",
                       "threshold: needs both DDPM and FM experts"]
