"""Running a scenario under a policy: `simulate(scenario, "all_local", seed=1)`."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simpy
from tqdm import tqdm

from jsorc_sim import controller, results, workload
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.fastpath import FastPath
from jsorc_sim.recorder import RECORD_MODES, Recorder
from jsorc_sim.results import Meters, Result
from jsorc_sim.runtime import Runtime
from jsorc_sim.scenario import Scenario
from policies import Policy, absolute_ref, make

# Separate random streams, so that changing one thing (the policy, a service time) leaves
# the others' draws alone: paired comparisons across policies see the same requests.
#   arrivals: an open workload's arrival times and app picks, and a trace's spreading;
#   service:  an open workload's service draws, one child stream per action;
#   startup:  load and replica start-up times (one per action);
#   policy:   the policy's seed;
#   clients:  one child per closed-loop client, for its app picks and service draws, so
#             that a client's j-th request does not depend on when the others finish.
# Request i's service draws come from its source's stream, drawn when it arrives, not from
# one stream in the (policy-dependent) order calls happen. "clients" comes last because
# children are spawned by position: the streams before it keep their seeds.
STREAMS = ("arrivals", "service", "startup", "policy", "clients")


def streams(seed: int) -> dict[str, np.random.SeedSequence]:
    return dict(zip(STREAMS, np.random.SeedSequence(seed).spawn(len(STREAMS)), strict=True))


def simulate(
    scenario: Scenario | str | Path,
    policy: Policy | str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    app: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
    record_events: bool = False,
    record: str = "calls",
    out: str | Path | None = None,
    fast: str = "auto",
) -> Result:
    """Run `scenario` (or a path to one) under `policy` and return its tables.

    `policy` is a Policy object, a registered name, `module:Class` or `path/to/file.py:Class`
    (from the current folder; a scenario's `[policy] name` from the scenario's); without it
    the scenario's `[policy]` runs. `overrides` are dotted paths of the scenario's table, as in an
    experiment file's `set` ({"workload.clients": 8, "node.memory_mb": 6144}), applied first
    and checked as the file is (a ScenarioError names a bad path or value); then `app`
    restricts the workload, and `seed` and `duration_s` override the scenario.
    `record_events` keeps every event the observation builder received in
    `result.extra["events"]` (for `policies.observe.replay`; slower and larger).
    `record` says which tables to keep: "calls" (every table), "requests" (all but calls) or
    "none" (neither; the report then comes from streaming statistics, see Result.report).
    `out` streams the kept calls and requests to Parquet files in that folder as the run goes
    (memory does not grow with them) and saves the run there at the end (`Result.save`); a
    file there that jsorc did not write is refused first (jsorc_sim.outputs.OutputError).
    `fast` chooses the engine (jsorc_sim.fastpath): "auto" computes the stretches where the
    placement stays put as queues rather than events where the scenario allows it, "off" runs
    SimPy only, "on" is auto but refuses (FastPathError) a scenario the fast path can never
    run; `result.extra["engine"]` says which path ran for how long, and why not elsewhere.
    """
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, got {record!r}")
    scenario = resolve_scenario(scenario, overrides=overrides, app=app, seed=seed,
                                duration_s=duration_s)

    # A policy file's path made absolute (a scenario's from its folder, like its other paths;
    # an argument's from the current one), so the saved scenario runs again from anywhere.
    if policy is None:
        policy_name = absolute_ref(scenario.policy.name, scenario.base_dir)
        policy_params = dict(scenario.policy.params)
        policy_obj = make(policy_name, policy_params)
    elif isinstance(policy, str):
        policy_name, policy_params = absolute_ref(policy), dict(params or {})
        policy_obj = make(policy_name, policy_params)
    else:
        policy_obj = policy
        policy_name = getattr(policy, "policy_name", type(policy).__name__)
        given = policy.params
        policy_params = dataclasses.asdict(given) \
            if dataclasses.is_dataclass(given) and not isinstance(given, type) else {}

    world = build(scenario, policy_name, policy_params, record=record, out=out, fast=fast,
                  record_events=record_events, observed=policy_name != "none")
    env, runtime = world.env, world.runtime
    if policy_name != "none":
        policy_obj.reset(int(world.streams["policy"].generate_state(1)[0]))
        env.process(controller.control(env, runtime, policy_obj, scenario.policy.interval_s,
                                       scenario.policy.on_error, policy_name))

    started = time.perf_counter()
    try:
        status = _run(env, scenario.duration_s, progress)
        world.recorder.finish()
    except BaseException:
        world.recorder.abort()  # no half-written table left in `out`
        raise
    return result(world, status, wall_s=time.perf_counter() - started, out=out)


def resolve_scenario(scenario: Scenario | str | Path, *,
                     overrides: Mapping[str, Any] | None = None, app: str | None = None,
                     seed: int | None = None, duration_s: float | None = None) -> Scenario:
    """The scenario a run uses: loaded if a path, then `overrides`, `app`, `seed` and
    `duration_s` applied, in that order (as `simulate` documents)."""
    source = str(scenario)
    if not isinstance(scenario, Scenario):
        scenario = scenario_mod.load(scenario)
    else:
        source = f"scenario {scenario.name!r}"
    if overrides:
        scenario = scenario_mod.override(scenario, overrides, source=f"{source} with overrides")
    if app is not None:
        scenario = scenario.for_app(app)
    replaced: dict[str, Any] = {}
    if seed is not None:
        replaced["seed"] = seed
    if duration_s is not None:
        if duration_s <= scenario.warmup_s:
            raise scenario_mod.ScenarioError(scenario.name, [
                f"duration {duration_s:g} s must exceed warmup_s = {scenario.warmup_s:g}"])
        replaced["duration_s"] = float(duration_s)
    if replaced:
        scenario = dataclasses.replace(scenario, **replaced)
    return scenario


@dataclass
class World:
    """A simulated world ready to run: everything but the control loop (see `build`)."""

    scenario: Scenario
    policy_name: str
    policy_params: dict[str, Any]
    env: simpy.Environment
    streams: dict[str, np.random.SeedSequence]
    recorder: Recorder
    runtime: Runtime
    fastpath: FastPath


def build(scenario: Scenario, policy_name: str, policy_params: dict[str, Any], *,
          record: str = "calls", out: str | Path | None = None, fast: str = "auto",
          record_events: bool = False, observed: bool = True) -> World:
    """The runtime, its workload, fast path and timeline sampler, registered with SimPy in
    the order every run uses (the order of processes fixes the order of simultaneous events,
    so it is part of the results). The caller registers its control loop next, if any:
    `simulate` the policy's (jsorc_sim.controller.control), jsorc_sim.stepping its own.
    `observed`: whether anything reads the observation window (else it is forgotten)."""
    recorder = Recorder(list(scenario.apps), list(scenario.actions), record=record,
                        warmup_s=scenario.warmup_s,
                        sink=results.sink(out) if out is not None else None)
    env = simpy.Environment()
    rng_streams = streams(scenario.seed)
    runtime = Runtime(env, scenario, rng_streams, record_events=record_events,
                      recorder=recorder)
    env.process(recorder.flusher(env))
    runtime.place_initial()
    arrivals = workload.start(env, runtime, scenario, rng_streams)
    runtime.fast = fastpath = FastPath(runtime, arrivals, fast, record_events=record_events)
    env.process(controller.sample_timeline(env, runtime, scenario.timeline_s,
                                           observed=observed))
    return World(scenario, policy_name, policy_params, env, rng_streams, recorder, runtime,
                 fastpath)


def meters(world: World) -> Meters:
    """The runtime's time integrals and counts up to now."""
    runtime = world.runtime
    return Meters(
        node_memory_mb_s=runtime.memory.total(),
        replica_memory_mb_s=runtime.replica_memory.total(),
        replica_core_s=runtime.replica_cores.total(),
        peak_memory_mb=runtime.memory.peak,
        oom_events=runtime.oom_events,
        arrivals=runtime.arrivals,
        ended_s=world.env.now,
        unfinished_arrivals=tuple(runtime.unfinished.values()),
    )


def result(world: World, status: str = "ok", *, wall_s: float = 0.0,
           out: str | Path | None = None) -> Result:
    """The run's Result as of now (at the end, what `simulate` returns), saved in `out`."""
    runtime = world.runtime
    extra: dict[str, Any] = {"engine": world.fastpath.summary.as_dict(world.env.now)}
    if runtime.event_log is not None:
        extra["events"] = runtime.event_log.events
    run = Result(world.scenario, world.policy_name, world.policy_params, world.recorder,
                 meters(world), status, wall_s=wall_s, extra=extra)
    if out is not None:
        try:
            run.save(out)
        except BaseException:
            world.recorder.abort()
            raise
    return run


def _run(env: simpy.Environment, duration_s: float, progress: bool) -> str:
    """Run to the end, in steps so a progress bar can follow (shown after 2 s of wall time)."""
    steps = 200 if progress else 1
    bar = tqdm(total=round(duration_s), unit="sim s", file=sys.stderr, delay=2.0,
               disable=not progress, leave=False, desc="simulating")
    try:
        for i in range(1, steps + 1):
            until = duration_s * i / steps
            env.run(until=until)
            bar.update(round(until) - bar.n)
    except controller.PolicyFailure as exc:
        return f"stopped: {exc}"
    finally:
        bar.close()
    return "ok"
