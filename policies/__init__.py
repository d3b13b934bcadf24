"""The placement-policy contract and library, shared by the simulator and the live controller.

Pure: nothing here does I/O, reads the wall clock or imports simpy, kubernetes, jsorc_sim or
jsorc_live (an import-linter contract checks it).
"""

from __future__ import annotations

from policies.checker import check_policy
from policies.contract import (
    ActionStats,
    AppStats,
    Decision,
    LatencyStats,
    Mode,
    NodeStats,
    Observation,
    Placement,
    PlacementError,
    Policy,
    Totals,
    check_decision,
)
from policies.registry import (
    NoParams,
    ParamInfo,
    PolicyError,
    describe,
    get,
    make,
    names,
    param,
    register,
    resolve,
)

__all__ = [
    "ActionStats",
    "AppStats",
    "Decision",
    "LatencyStats",
    "Mode",
    "NoParams",
    "NodeStats",
    "Observation",
    "ParamInfo",
    "Placement",
    "PlacementError",
    "Policy",
    "PolicyError",
    "Totals",
    "check_decision",
    "check_policy",
    "describe",
    "get",
    "make",
    "names",
    "param",
    "register",
    "resolve",
]
