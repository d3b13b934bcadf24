"""`jsorc_loadtest`, JSORC's server-side load test, over jsorc.

Jaseci 1.4's `jsorc_loadtest(test="synthetic_apps", experiment=APP, policy=P,
experiment_duration=S)` (jaseci_serv/base/jsorc_loadtest.py) configures the app's actions, loads
them all local (`all_local`) or all remote (`all_remote`, waiting until they answer) under the
Default policy, or leaves them to the Evaluation policy (`evaluation`); starts the benchmark and
the call tracking; runs the app's walker back to back from one client for S seconds; and
answers `{APP: {P: {"walker_level": benchmark report, "action_level": tracked calls}}}`, after
unloading what it loaded. The HTTP call blocks for the whole test, as JSORC's did.

`jsorc loadtest` (jsorc_live.loadtest) is the client-side tool with many clients and trace
replay; this is the same measurement in JSORC's form.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jsorc_live.actions.config import DEFAULT_CONFIG_MODULE
from jsorc_live.runtime import RuntimeRefusal
from policies import Mode

if TYPE_CHECKING:
    from jsorc_live.jaseci_api import JaseciApi

__all__ = ["POLICIES", "TESTS", "synthetic_apps"]

TESTS = ("synthetic_apps",)
#: JSORC's loadtest policies -> (jsorc policy, load mode or None: the policy places).
POLICIES: dict[str, tuple[str, str | None]] = {"all_local": ("Default", "module"),
                                               "all_remote": ("Default", "remote"),
                                               "evaluation": ("Evaluation", None)}


def synthetic_apps(api: JaseciApi, *, test: str, experiment: str, mem: int, policy: str,
                   duration_s: float, eval_phase_s: float, perf_phase_s: float,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    service = api.service
    runtime = service.runtime
    if test not in TESTS:
        raise RuntimeRefusal(f"jsorc_loadtest test must be one of {', '.join(TESTS)} "
                             f"(JSORC's), got {test!r}")
    walker = runtime.walkers.get(experiment)
    if walker is None:
        raise RuntimeRefusal(f"jsorc_loadtest experiment names the app to run: one of "
                             f"{', '.join(sorted(runtime.walkers))}; got {experiment!r}", 404)
    if policy not in POLICIES:
        raise RuntimeRefusal(f"jsorc_loadtest policy must be one of {', '.join(POLICIES)}, "
                             f"got {policy!r}")
    if mem:
        raise RuntimeRefusal("jsorc_loadtest mem: jsorc measures the node's memory itself; "
                             "leave mem 0")
    if not duration_s > 0:
        raise RuntimeRefusal(f"jsorc_loadtest experiment_duration must be > 0 seconds, "
                             f"got {duration_s}")
    jsorc_policy, mode = POLICIES[policy]
    if mode is None and not service.settings.automation:
        raise RuntimeRefusal("jsorc_loadtest policy evaluation places the actions itself: "
                             "turn automation on first (config_set META_CONFIG "
                             "'{\"automation\": true}', then service_refresh meta)", 409)
    actions = list(dict.fromkeys(step.action for step in walker.steps))
    for name in actions:
        if name not in runtime.routers:
            service.actions_config(name, DEFAULT_CONFIG_MODULE)
    params = ({} if mode else {"eval_phase_s": eval_phase_s, "perf_phase_s": perf_phase_s})
    service.actionpolicy_set(jsorc_policy, params)
    loaded: list[str] = []
    try:
        if mode is not None:
            for name in actions:
                service.actions_load(name, mode)
                loaded.append(name)
            for name in actions:
                router = runtime.router(name)
                if not router.wait_settled(runtime.call_timeout_s) or router.last_error:
                    raise RuntimeRefusal(f"jsorc_loadtest: {name} did not load as {mode}: "
                                         f"{router.last_error or 'not ready in time'}", 502)
        service.benchmark_start()
        service.trackact_start()
        deadline = clock() + duration_s
        while clock() < deadline:
            runtime.run_walker(experiment, {})
        walker_level = api.benchmark_stop(report=True)
        action_level = api.trackact_stop()
    finally:
        for name in loaded:
            if runtime.router(name).desired.mode is not Mode.UNLOADED:
                service.actions_unload(name, "auto")
    return {experiment: {policy: {"walker_level": walker_level,
                                  "action_level": action_level}}}
