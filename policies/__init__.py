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
from policies.encoding import Encoding
from policies.learned import AgentParams, AgentPolicy
from policies.registry import (
    CheckedParams,
    NoParams,
    ParamInfo,
    PolicyError,
    PolicyNotAllowed,
    check_allow_list,
    describe,
    file_allowed,
    get,
    load_policy_file,
    make,
    module_allowed,
    names,
    package_of,
    param,
    register,
    resolve,
)
from policies.sources import ENTRY_POINT_GROUP, absolute_ref

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActionStats",
    "AgentParams",
    "AgentPolicy",
    "AppStats",
    "CheckedParams",
    "Decision",
    "Encoding",
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
    "PolicyNotAllowed",
    "Totals",
    "absolute_ref",
    "check_allow_list",
    "check_decision",
    "check_policy",
    "describe",
    "file_allowed",
    "get",
    "load_policy_file",
    "make",
    "module_allowed",
    "names",
    "package_of",
    "param",
    "register",
    "resolve",
]
