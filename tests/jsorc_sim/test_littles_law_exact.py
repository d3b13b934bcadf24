"""Little's law, exactly: the observation builder's integral of calls in the system up to T
equals the summed time every call spent in the system up to T, in random small scenarios.

The right side is computed from the call rows alone (issue time and latency, ok or failed),
read after the run has gone on long enough for every call issued before T to finish: a call
still unfinished at T counts at its age then. Arrivals, service draws and placement moves
are the test's own (hypothesis), fed to the real runtime; nothing is shared with the
builder's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import pytest
import simpy
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jsorc_sim.recorder import C_LAT, C_TS
from jsorc_sim.runtime import Runtime
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import streams
from policies import Placement

ACTIONS = ("a", "b", "c")
PLACEMENTS = ("local", "remote:1", "remote:2", "unloaded")


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    actions = {}
    for name in ACTIONS:
        actions[name] = {
            "service": {"dist": "const", "mean_ms": draw(st.floats(1.0, 400.0))},
            "local_memory_mb": draw(st.sampled_from([100.0, 900.0, 2500.0, 3400.0])),
            "local_load_s": draw(st.sampled_from([0.0, 0.3, 2.0])),
            "remote_start_s": draw(st.sampled_from([0.0, 0.5, 3.0])),
            "remote_cores": draw(st.integers(1, 2)),
            "default_mode": draw(st.sampled_from(["local", "remote"])),
        }
    apps = {f"app{i}": {"calls": draw(st.lists(st.sampled_from(ACTIONS), min_size=1,
                                               max_size=3)),
                        "compute_ms": draw(st.sampled_from([0.0, 5.0]))}
            for i in range(2)}
    table = {
        "name": "little", "duration_s": 1000.0, "warmup_s": 0.0,
        "node": {"cores": draw(st.integers(1, 3)), "memory_mb": 4096.0,
                 "runtime_memory_mb": 500.0, "restart_s": 1.0},
        "network": {"rtt_ms": draw(st.sampled_from([0.0, 4.0]))},
        "actions": actions, "apps": apps,
        "placement": {n: draw(st.sampled_from(PLACEMENTS)) for n in ACTIONS},
    }
    n = draw(st.integers(1, 60))
    arrivals = sorted(draw(st.lists(st.floats(0.0, 20.0), min_size=n, max_size=n)))
    requests = [(t, draw(st.integers(0, 1))) for t in arrivals]
    moves = [(draw(st.floats(0.0, 25.0)), draw(st.sampled_from(ACTIONS)),
              draw(st.sampled_from(PLACEMENTS))) for _ in range(draw(st.integers(0, 6)))]
    cut = draw(st.floats(0.5, 25.0))
    return {"table": table, "requests": requests, "moves": sorted(moves), "cut": cut}


def arrive(env: simpy.Environment, runtime: Runtime,
           requests: list[tuple[float, int]]) -> Generator[simpy.Event, Any, None]:
    for t, app in requests:
        if t > env.now:
            yield env.timeout(t - env.now)
        plan = runtime.apps[app]
        draws = [action.spec.service.mean_ms for action in plan.actions]
        env.process(runtime.serve(app, 0.0, draws))


def move(env: simpy.Environment, runtime: Runtime,
         moves: list[tuple[float, str, str]]) -> Generator[simpy.Event, Any, None]:
    for t, name, placement in moves:
        if t > env.now:
            yield env.timeout(t - env.now)
        runtime.actions[name].apply(Placement.parse(placement), "test", "move")


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_integral_of_calls_in_system_is_the_sum_of_their_times(world: dict[str, Any]) -> None:
    scenario = from_dict(world["table"])
    env = simpy.Environment()
    runtime = Runtime(env, scenario, streams(1))
    runtime.place_initial()
    env.process(arrive(env, runtime, world["requests"]))
    env.process(move(env, runtime, world["moves"]))
    cut = world["cut"]
    env.run(until=cut)
    at_cut = runtime.observations.integrals(cut)
    env.run(until=scenario.duration_s)
    assert not runtime.unfinished, "every request should be over long before the end"

    # Left: waiting for a first placement + local system + remote system, every action.
    left = sum(v[0] + v[1] + v[7] for v in at_cut.actions.values())
    rows = np.array(runtime.recorder.calls, dtype=float).reshape(-1, 13)
    issued = rows[:, C_TS]
    ended = issued + rows[:, C_LAT] / 1000.0
    before = issued < cut
    right = float(np.sum(np.minimum(ended[before], cut) - issued[before]))
    assert left == pytest.approx(right, rel=1e-9, abs=1e-9)
    event(f"out of memory: {runtime.oom_events > 0}")
    event(f"calls unfinished at the cut: {bool(np.any(before & (ended > cut)))}")
