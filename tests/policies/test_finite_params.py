"""NaN and the infinities are refused by every numeric parameter of every policy and guard,
through `make` (strings from a command line or an API included) and given to `Params`
directly. The cases are generated from the registry, not listed by hand."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

import policies
from policies import PolicyError
from policies.guards import GUARDS

NON_FINITE: tuple[Any, ...] = (math.nan, math.inf, -math.inf, "NaN", "nan", "Infinity", "inf",
                               "-inf")


def _numeric(ref: str) -> list[policies.ParamInfo]:
    return [p for p in policies.describe(ref) if p.type in ("float", "int", "float | None",
                                                            "int | None")]


NUMERIC = [(ref, p.name) for ref in policies.names() for p in _numeric(ref)]


def test_every_policy_with_numbers_is_covered() -> None:
    covered = {ref for ref, _ in NUMERIC}
    assert {"hpa", "kpa", "ray_serve", "evaluation", "adaptive", "predictive", "model_based",
            "all_remote"} <= covered
    assert len(NUMERIC) > 40


@pytest.mark.parametrize(("ref", "name"), NUMERIC, ids=[f"{r}.{n}" for r, n in NUMERIC])
def test_make_refuses_non_finite_values(ref: str, name: str) -> None:
    for value in NON_FINITE:
        with pytest.raises(PolicyError, match=f"{ref}.{name} must be") as refused:
            policies.make(ref, {name: value})
        assert "finite" in str(refused.value) or "int" in str(refused.value)


PARAMS_TYPES = sorted({policies.registry.params_type(policies.resolve(ref))
                       for ref in policies.names()} | {cls.Params for cls in GUARDS.values()},
                      key=lambda t: t.__name__)


@pytest.mark.parametrize("ptype", PARAMS_TYPES, ids=[t.__name__ for t in PARAMS_TYPES])
def test_params_built_directly_refuse_non_finite_floats(ptype: type) -> None:
    floats = [f.name for f in dataclasses.fields(ptype)
              if isinstance(getattr(ptype(), f.name), float)]
    for name in floats:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(PolicyError, match=f"{ptype.__name__}.{name} must be a finite"):
                ptype(**{name: value})
            with pytest.raises(PolicyError):
                dataclasses.replace(ptype(), **{name: value})


def test_declared_bounds_are_checked_when_params_are_built_directly() -> None:
    hpa = policies.resolve("hpa").Params  # type: ignore[attr-defined]
    with pytest.raises(PolicyError, match=r"HpaParams\.target must be >= 0\.01, got 0\.0"):
        hpa(target=0.0)
    assert hpa(target=0.5).target == 0.5


def test_nested_parameters_are_checked_too() -> None:
    with pytest.raises(PolicyError, match=r"hpa\.target must be a finite"):
        policies.make("compose", {"scaler": "hpa", "scaler_params": {"target": "nan"}})
    with pytest.raises(PolicyError, match="cooldown_s must be a finite"):
        policies.make("guarded", {"policy": "hpa",
                                  "guards": {"cooldown": {"cooldown_s": math.inf}}})
