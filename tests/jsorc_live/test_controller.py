"""The controller drives the policy object exactly as the simulator does.

The simulator records the observations it hands a policy (through a recording wrapper);
the live Controller is then fed the same observations, with a fresh policy of the same
kind reset with the same seed: the decisions, and the placement changes they cause, must
be identical. jsorc_sim is imported here, in this test only: jsorc_live never imports it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

import jsorc_sim.recorder as sim_recorder
from jsorc_live.controller import Controller, LiveObserver, apply_to_runtime
from jsorc_live.runtime import CALL_COLUMNS, REQUEST_COLUMNS, ActionInfo, Runtime, Step, Walker
from jsorc_sim.simulate import simulate
from policies import Decision, Observation, Placement, make

SCENARIO = "experiments/scenarios/jsorc_loadtest.toml"


class Recording:
    """Wraps a policy; keeps the seed, every observation and every decision."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.params = inner.params
        self.seed: int | None = None
        self.observations: list[Observation] = []
        self.decisions: list[Decision] = []

    def reset(self, seed: int) -> None:
        self.seed = seed
        self.inner.reset(seed)

    def decide(self, observation: Observation) -> Decision:
        self.observations.append(observation)
        decision: Decision = self.inner.decide(observation)
        self.decisions.append(decision)
        return decision


def test_live_tables_have_the_simulators_columns() -> None:
    assert CALL_COLUMNS == sim_recorder.CALL_COLUMNS
    assert REQUEST_COLUMNS == sim_recorder.REQUEST_COLUMNS


@pytest.mark.parametrize(("policy", "params", "app"), [
    ("model_based", {}, "flow_analysis"),
    ("evaluation", {"eval_phase_s": 10.0, "perf_phase_s": 40.0}, "virtual_assistant"),
    ("predictive", {}, "virtual_assistant"),
])
def test_same_observations_same_decisions(policy: str, params: dict[str, Any],
                                          app: str) -> None:
    recording = Recording(make(policy, params))
    result = simulate(SCENARIO, recording, app=app, duration_s=300, seed=3)  # type: ignore[arg-type]
    assert recording.seed is not None and len(recording.observations) > 10

    live_policy = make(policy, params)
    current: dict[str, Observation] = {}

    def apply(action: str, placement: Placement) -> bool:
        # The router's rule: a change when it differs from what was last asked for.
        return placement != current["obs"].actions[action].desired

    controller = Controller(live_policy, policy, apply=apply,
                            known=lambda: list(current["obs"].actions), clock=lambda: 0.0,
                            seed=recording.seed)
    live_decisions = []
    for observation in recording.observations:
        current["obs"] = observation
        live_decisions.append(controller.step(observation))
    assert live_decisions == recording.decisions
    sim_changes = [(d["ts"], d["action"], d["placement"], d["previous"])
                   for d in result.decisions.to_dict("records")
                   if d["source"] not in ("runtime", "scenario") and d["action"]]
    live_changes = [(d["ts"], d["action"], d["placement"], d["previous"])
                    for d in controller.decisions if d["action"]]
    assert live_changes == sim_changes
    assert live_changes, "the scenario should make the policy move something"


class Failing:
    params = None

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        raise ZeroDivisionError("boom")


class Unknown(Failing):
    def decide(self, observation: Observation) -> Decision:
        return Decision({"zzz": Placement.local()})


def test_a_failing_policy_is_logged_and_the_placement_kept() -> None:
    applied: list[tuple[str, Placement]] = []
    controller = Controller(Failing(), "failing",  # type: ignore[arg-type]
                            apply=lambda a, p: applied.append((a, p)) is None,
                            known=lambda: ["a"], clock=lambda: 0.0)
    assert controller.step(Observation.empty(now=5.0)) is None
    assert not applied
    assert controller.decisions[0]["error"].startswith("ZeroDivisionError: boom")
    assert controller.events[0]["kind"] == "policy_error"
    bad = Controller(Unknown(), "unknown", apply=lambda a, p: True,  # type: ignore[arg-type]
                     known=lambda: ["a"], clock=lambda: 0.0)
    assert bad.step(Observation.empty()) is None
    assert "unknown action 'zzz'" in bad.decisions[0]["error"]


class FakeModule:
    memory_mb = 7.0

    def call(self, name: str, kwargs: dict[str, Any]) -> Any:
        time.sleep(0.001)
        return 1

    def unload(self) -> None:
        pass


def test_the_live_observer_and_loop_move_actions_as_the_policy_says() -> None:
    runtime = Runtime(load_local=lambda m: FakeModule(), connect=lambda r: None,  # type: ignore[arg-type, return-value]
                      walkers=[Walker("w", (Step("a", "f"), Step("b", "f")))])
    runtime.configure(ActionInfo("a", "ma", local_memory_mb=5.0))
    runtime.configure(ActionInfo("b", "mb"))
    observer = LiveObserver(runtime)
    for _ in range(4):
        assert runtime.run_walker("w", {}).ok
    obs = observer.observe(1.0)
    a = obs.actions["a"]
    assert a.calls == 4 and a.cold_starts == 1 and a.latency_local.count == 4
    assert str(a.placement) == "local" and a.local_memory_mb == 7.0
    assert math.isnan(a.latency_remote.mean_ms) and math.isnan(a.remote_service_ms)
    assert a.local_service_ms > 0
    assert obs.apps["w"].requests == 4 and obs.apps["w"].calls_per_request == {"a": 1.0,
                                                                               "b": 1.0}
    assert obs.totals.requests_so_far == 4 and obs.node.cores >= 1
    assert 0 < obs.node.memory_used_mb < obs.node.memory_total_mb
    assert observer.observe(1.0).actions["a"].calls == 0  # a new window

    policy = make("static", {"placements": {"a": "unloaded"}, "default": "local"})
    controller = Controller(policy, "static", apply=apply_to_runtime(runtime),
                            known=lambda: list(runtime.routers), clock=runtime.now)
    controller.start(observer.observe, lambda: 0.05, lambda: True)
    deadline = time.monotonic() + 5
    while runtime.routers["a"].placement != Placement.unloaded() and time.monotonic() < deadline:
        time.sleep(0.02)
    controller.stop()
    assert runtime.routers["a"].placement == Placement.unloaded()
    assert str(runtime.routers["b"].placement) == "local"
    assert [d["action"] for d in controller.decisions if d["action"]] == ["a"]
    runtime.close()
