"""A config module for the kube tests: one light action (tests/jsorc_live/sample_actions.py,
no model to load) in jac-splice-orc's keys, so a pod is ready in well under a second."""

from __future__ import annotations

from jsorc_live.actions.config import ActionConfig

LIGHT = "light_act"
ACTION_CONFIGS: dict[str, ActionConfig] = {
    LIGHT: ActionConfig.from_dict(LIGHT, {
        "module": "tests.jsorc_live.sample_actions",
        "lib_mem_size_req": "128Mi",
        "lib_cpu_req": "100m",
        "load_type": "remote",
        "setup": {"factor": 5},
    }),
}
