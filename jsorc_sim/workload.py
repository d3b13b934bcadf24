"""Where requests come from: open Poisson arrivals, closed-loop clients, or a trace replay.

Each source of requests draws everything random about its requests: the app (by the mix) and
one base service time per call, all drawn when the request arrives (so a request that fails
midway shifts no later request's draws). A source is an open workload's arrival process
(Poisson or trace: request i is the i-th arrival, and arrivals do not depend on the policy)
or one closed-loop client k (its j-th request; each client has its own streams, so it does
not matter when the other clients' requests finish). The streams (see
`jsorc_sim.simulate.STREAMS`) are drawn from by nothing else, so for one seed request i gets
the same app and service draws whatever the policy: common random numbers, which make
comparisons across policies paired request by request. (A client's think time, `think_ms`,
is a constant: nothing to draw.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from jsorc_sim.distributions import Sampler, ServiceMaker, service_maker
from jsorc_sim.runtime import Runtime
from jsorc_sim.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from jsorc_traces import Arrivals

BATCH = 4096


# The base service times (ms) of one source's requests: for each app, the samplers of its
# calls in call order (before `per_size_ms` and `local_slowdown`, which the call adds).
AppSamplers = list[tuple[Sampler, ...]]


def service_samplers(makers: Sequence[ServiceMaker], app_calls: Sequence[Sequence[int]],
                     seed: np.random.SeedSequence) -> AppSamplers:
    """One source's samplers: each action has its own stream within the source, so changing
    one action's distribution leaves the other actions' draws alone."""
    samplers = [make(np.random.default_rng(child))
                for make, child in zip(makers, seed.spawn(len(makers)), strict=True)]
    return [tuple(samplers[code] for code in calls) for calls in app_calls]


def start(env: simpy.Environment, runtime: Runtime, scenario: Scenario,
          streams: dict[str, np.random.SeedSequence]) -> None:
    """Start the arrival processes of the scenario's workload, on the named `streams`."""
    workload = scenario.workload
    apps = list(scenario.apps)
    base = scenario.resolve(".")
    makers = [service_maker(spec.service, base) for spec in scenario.actions.values()]
    app_calls = [tuple(action.code for action in plan.actions) for plan in runtime.apps]
    if workload.kind == "closed":
        # Spawned children depend on their index only: client k is the same client
        # whatever the number of clients.
        for seed in streams["clients"].spawn(workload.clients):
            picks, service = seed.spawn(2)
            env.process(_client(env, runtime, workload.think_ms / 1000.0,
                                workload.client_cpu_ms / 1000.0,
                                _app_picker(scenario, np.random.default_rng(picks)),
                                service_samplers(makers, app_calls, service)))
        return
    rng = np.random.default_rng(streams["arrivals"])
    samplers = service_samplers(makers, app_calls, streams["service"])
    if workload.kind == "poisson":
        env.process(_poisson(env, runtime, workload.rate_per_s, _app_picker(scenario, rng),
                             rng, samplers))
    else:
        arrivals = load_trace(scenario, rng)
        codes = _trace_apps(scenario, arrivals, apps, rng)
        # The map is checked against the whole trace (above); only the window is replayed.
        keep = (codes >= 0) & (arrivals.ts < scenario.duration_s)
        env.process(_replay(env, runtime, arrivals.ts[keep], codes[keep],
                            np.nan_to_num(arrivals.size[keep]), samplers))


def load_trace(scenario: Scenario, rng: np.random.Generator) -> Arrivals:
    import jsorc_traces as traces  # only trace workloads need the CSV machinery

    workload = scenario.workload
    path = scenario.resolve(workload.trace)
    arrivals = traces.read_trace(
        path, workload.trace_format, seed=int(rng.integers(2**31)), spread=workload.spread,
        llm_size=workload.llm_size,
    )
    if workload.time_scale != 1.0:
        arrivals = dataclasses.replace(arrivals, ts=arrivals.ts * workload.time_scale)
    return arrivals


def _app_picker(scenario: Scenario, rng: np.random.Generator) -> Iterator[int]:
    """App codes drawn by the mix weights, in batches."""
    weights = np.array([scenario.workload.mix.get(app, 0.0) for app in scenario.apps])
    p = weights / weights.sum()
    if np.count_nonzero(p) == 1:
        only = int(np.flatnonzero(p)[0])
        while True:
            yield only
    while True:
        yield from rng.choice(len(p), size=BATCH, p=p).tolist()


def _trace_apps(scenario: Scenario, arrivals: Arrivals, apps: list[str],
                rng: np.random.Generator) -> np.ndarray:
    """The app code of each arrival: by `map`, else the app its stream is named after, else by
    `mix` (or dropped, with `unmapped = "drop"`)."""
    workload = scenario.workload
    codes = np.full(len(arrivals), -1, dtype=np.int64)
    keys = arrivals.key
    mapped = np.zeros(len(arrivals), dtype=bool)
    problems = unmatched_streams(workload.map, arrivals)
    if problems:
        raise ScenarioError(scenario.name, problems)
    for stream, app in workload.map.items():
        match = match_stream(keys, stream)
        codes[match] = apps.index(app)
        mapped |= match
    # A stream named like one of the scenario's apps (the `app` column of a requests or
    # call table) is that app's traffic, unless the map says otherwise.
    for code, app in enumerate(apps):
        named = ~mapped & (keys == app)
        codes[named] = code
        mapped |= named
    rest = ~mapped
    if workload.unmapped == "mix" and rest.any():
        weights = np.array([workload.mix.get(app, 0.0) for app in apps])
        codes[rest] = rng.choice(len(apps), size=int(rest.sum()), p=weights / weights.sum())
    return codes


def match_stream(keys: np.ndarray, stream: str) -> np.ndarray:
    """The arrivals of `stream`: its exact key, or a unique prefix of >= 6 characters (so
    people can write the start of a 64-character hash)."""
    match: np.ndarray = np.asarray(keys == stream, dtype=bool)
    if not match.any() and len(stream) >= 6:
        match = np.array([str(k).startswith(stream) for k in keys], dtype=bool)
    return match


def unmatched_streams(mapping: dict[str, str] | Any, arrivals: Arrivals) -> list[str]:
    """A problem for each `map` entry that names no stream of the trace."""
    distinct = np.array(arrivals.keys(), dtype=object)
    problems = []
    for stream in mapping:
        matches = [str(k) for k in distinct[match_stream(distinct, stream)]]
        if not matches:
            problems.append(f"workload.map: no stream {stream!r} in trace {arrivals.source} "
                            f"(streams: {', '.join(str(s)[:12] for s in distinct[:10])})")
        elif len(matches) > 1 and stream not in matches:
            problems.append(f"workload.map: {stream!r} is the start of several streams "
                            f"({', '.join(m[:12] for m in matches)}): give more characters")
    return problems


def _poisson(env: simpy.Environment, runtime: Runtime, rate: float, pick: Iterator[int],
             rng: np.random.Generator, samplers: AppSamplers) -> Generator[simpy.Event, Any, None]:
    timeout, process, serve = env.timeout, env.process, runtime.serve
    for gap in _gaps(rng, rate):
        yield timeout(gap)
        app = next(pick)
        process(serve(app, 0.0, [draw() for draw in samplers[app]]))


def _gaps(rng: np.random.Generator, rate: float) -> Iterator[float]:
    while True:
        yield from rng.exponential(1.0 / rate, BATCH).tolist()


def _client(env: simpy.Environment, runtime: Runtime, think_s: float, cpu_s: float,
            pick: Iterator[int], samplers: AppSamplers) -> Generator[simpy.Event, Any, None]:
    """A closed-loop client: one request at a time, back to back (JSORC's loadtest).

    Between two requests it spends `cpu_s` on a node core (a load generator on the same
    machine, and its HTTP hop) and then thinks `think_s`; neither is in the latency."""
    serve, cores = runtime.serve, runtime.cores
    while True:
        app = next(pick)
        yield from serve(app, 0.0, [draw() for draw in samplers[app]])
        if cpu_s:
            with cores.request() as req:
                yield req
                yield env.timeout(cpu_s)
        if think_s:
            yield env.timeout(think_s)


def _replay(env: simpy.Environment, runtime: Runtime, ts: np.ndarray, apps: np.ndarray,
            sizes: np.ndarray, samplers: AppSamplers) -> Generator[simpy.Event, Any, None]:
    timeout, process, serve = env.timeout, env.process, runtime.serve
    now = 0.0
    for t, app, size in zip(ts.tolist(), apps.tolist(), sizes.tolist(), strict=True):
        if t > now:
            yield timeout(t - now)
            now = t
        process(serve(app, size, [draw() for draw in samplers[app]]))
