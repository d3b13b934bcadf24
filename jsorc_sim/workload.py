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

With `[[workload.phases]]` the mix, the clients and the Poisson rate step at the phases'
starts (`WorkloadSpec.in_force`): a request's app is drawn by the mix of the phase it is
issued in, one uniform per request (`arrivals.MixPhases`). A scenario without phases takes
none of these paths, so it draws exactly what it drew before phases existed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import simpy

from jsorc_sim.arrivals import (
    MixPhases,
    OpenSource,
    PhasedPoissonSource,
    PoissonSource,
    TraceSource,
    arrive,
)
from jsorc_sim.distributions import Sampler, ServiceMaker, service_maker
from jsorc_sim.runtime import Runtime
from jsorc_sim.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from jsorc_traces import TraceWindows

BATCH = 4096
SECONDS_PER_DAY = 86_400.0

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Streams(Protocol):
    """What a check of stream names reads of a trace: `Arrivals` or `TraceWindows`."""

    @property
    def key_names(self) -> tuple[str, ...]: ...

    @property
    def source(self) -> str: ...


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
          streams: dict[str, np.random.SeedSequence]) -> OpenSource | None:
    """Start the arrival processes of the scenario's workload, on the named `streams`.

    An open workload (Poisson or trace) returns its `OpenSource`, which the fast path draws
    from too (jsorc_sim.fastpath); a closed one returns None."""
    workload = scenario.workload
    base = scenario.resolve(".")
    makers = [service_maker(spec.service, base) for spec in scenario.actions.values()]
    app_calls = [tuple(action.code for action in plan.actions) for plan in runtime.apps]
    phases = workload.in_force()
    if workload.kind == "closed":
        # Spawned children depend on their index only: client k is the same client
        # whatever the number of clients (and in a phase with fewer, the first ones run).
        clients = max(phase.clients or 1 for phase in phases)
        for k, seed in enumerate(streams["clients"].spawn(clients)):
            picks, service = seed.spawn(2)
            rng = np.random.default_rng(picks)
            on = tuple((phase.start_s, k < (phase.clients or 1)) for phase in phases)
            env.process(_client(env, runtime, workload.think_ms / 1000.0,
                                workload.client_cpu_ms / 1000.0, _picker(scenario, rng),
                                service_samplers(makers, app_calls, service), on))
        return None
    rng = np.random.default_rng(streams["arrivals"])
    samplers = service_samplers(makers, app_calls, streams["service"])
    source: OpenSource
    if workload.kind == "poisson" and len(phases) > 1:
        source = PhasedPoissonSource([phase.rate_per_s or 1.0 for phase in phases],
                                     _mix_phases(scenario), rng, samplers, app_calls)
    elif workload.kind == "poisson":
        source = PoissonSource(workload.rate_per_s, _mix(scenario), rng, samplers, app_calls)
    else:
        source = TraceSource(trace_requests(scenario, rng), samplers, app_calls)
    source.process = env.process(arrive(env, runtime, source))
    return source


def load_trace(scenario: Scenario, rng: np.random.Generator, *,
               window: int | None = None) -> TraceWindows:
    """The trace's arrivals over the run (`duration_s`, on the scenario's clock) and a little
    past it, window by window, with the names of every stream of the whole trace.

    Only the run's part is read, and a per-minute trace is expanded a window at a time as the
    run goes, with the arrivals the whole trace would give there (jsorc_traces.windows).
    `window` is the most arrivals a window holds (default `jsorc_traces.windows.WINDOW`)."""
    import jsorc_traces as traces  # only trace workloads need the CSV machinery
    from jsorc_traces.windows import WINDOW

    workload = scenario.workload
    path = scenario.resolve(workload.trace)
    # A hair past the end, so no arrival with ts * time_scale < duration_s is lost to rounding
    # in the division; the caller cuts at duration_s exactly. From the start of the day the
    # run's end is not known before the first arrival is: the caller cuts (the windows are
    # read lazily, so nothing past the end is expanded).
    max_s = (scenario.duration_s / workload.time_scale * (1.0 + 1e-9)
             if workload.trace_origin == "first_arrival" else None)
    return traces.read_windows(
        path, workload.trace_format, seed=int(rng.integers(2**31)), spread=workload.spread,
        llm_size=workload.llm_size, max_s=max_s, window=WINDOW if window is None else window,
    )


def trace_requests(scenario: Scenario, rng: np.random.Generator, *,
                   window: int | None = None) -> Iterator[tuple[FloatArray, IntArray, FloatArray]]:
    """A trace replay's requests, window by window: times on the run's clock (`time_scale`
    applied, < `duration_s`), app codes, sizes (0 where the trace gives none).

    Cut in windows, these are the arrays a read of the whole trace gives, to the bit: the map
    is checked against every stream here, before any window is read, and the `mix` draws are
    one uniform per unmapped arrival in arrival order (`Generator.choice` with `p`, or with
    phases the mix of the phase it arrives in), so drawing them a window at a time draws the
    same numbers. Nothing else draws from `rng` meanwhile."""
    trace = load_trace(scenario, rng, window=window)
    app_of = _trace_apps(scenario, trace, list(scenario.apps))
    workload = scenario.workload
    mix: FloatArray | MixPhases | None = None
    if workload.unmapped == "mix" and workload.streams == "mix":
        mix = _mix_phases(scenario) if workload.phases else _mix(scenario)
    return _replay(trace, app_of, mix, rng, workload.time_scale, scenario.duration_s,
                   trace_offset(trace.origin, workload.trace_origin))


def trace_offset(origin: float, trace_origin: str) -> float:
    """Seconds added to the trace's times (first arrival at 0) for `trace_origin`: none from
    the first arrival; from the start of the first arrival's day, on the trace's clock (days of
    86,400 s from its zero: minute 1 of an azure2019 file, UTC midnight of an LLM trace)."""
    return 0.0 if trace_origin == "first_arrival" else float(origin % SECONDS_PER_DAY)


def _replay(trace: TraceWindows, app_of: IntArray, mix: FloatArray | MixPhases | None,
            rng: np.random.Generator, time_scale: float, duration_s: float,
            offset: float = 0.0) -> Iterator[tuple[FloatArray, IntArray, FloatArray]]:
    """The requests of each window (see `trace_requests`); windows left empty are skipped."""
    for part in trace.windows():
        ts = part.ts + offset if offset else part.ts
        ts = ts * time_scale if time_scale != 1.0 else ts
        n = int(np.searchsorted(ts, duration_s, side="left"))  # ts < duration_s: a prefix
        ts = ts[:n]
        app = app_of[part.key_code[:n]]
        size = np.zeros(n) if part.size is None else np.nan_to_num(part.size[:n])
        rest = app < 0
        if rest.any():
            if isinstance(mix, MixPhases):
                app[rest] = mix.pick(rng.random(int(rest.sum())), mix.phase_at(ts[rest]))
            elif mix is not None:
                app[rest] = rng.choice(len(mix), size=int(rest.sum()), p=mix)
            else:  # unmapped = "drop"
                keep = ~rest
                ts, app, size = ts[keep], app[keep], size[keep]
        if len(ts):
            yield ts, app, size
        if n < len(part):
            return


def _mix(scenario: Scenario) -> np.ndarray:
    """The probability of each app (in the scenario's order) by the mix weights."""
    weights = np.array([scenario.workload.mix.get(app, 0.0) for app in scenario.apps])
    p: np.ndarray = weights / weights.sum()
    return p


def _mix_phases(scenario: Scenario) -> MixPhases:
    """The mix from t = 0 and from each phase on, by app in the scenario's order."""
    phases = scenario.workload.in_force()
    return MixPhases.of([phase.start_s for phase in phases],
                        [[phase.mix.get(app, 0.0) for app in scenario.apps] for phase in phases])


def _picker(scenario: Scenario, rng: np.random.Generator) -> Callable[[int], int]:
    """A closed-loop client's app draws: phase -> app. Without phases, the draws of
    `_app_picker` (whatever the phase); with them, one uniform per request, in batches, read
    through the mix of the phase the request is issued in."""
    if not scenario.workload.phases:
        picks = _app_picker(scenario, rng)
        return lambda _phase: next(picks)
    mixes = _mix_phases(scenario)
    uniforms: Iterator[float] = iter(())

    def pick(phase: int) -> int:
        nonlocal uniforms
        u = next(uniforms, None)
        if u is None:
            uniforms = iter(rng.random(BATCH).tolist())
            u = next(uniforms)
        return int(np.searchsorted(mixes.cdf[phase], u, side="right"))
    return pick


def _app_picker(scenario: Scenario, rng: np.random.Generator) -> Iterator[int]:
    """App codes drawn by the mix weights, in batches."""
    p = _mix(scenario)
    if np.count_nonzero(p) == 1:
        only = int(np.flatnonzero(p)[0])
        while True:
            yield only
    while True:
        yield from rng.choice(len(p), size=BATCH, p=p).tolist()


def _trace_apps(scenario: Scenario, trace: Streams, apps: list[str]) -> IntArray:
    """The app code of each stream of the trace (-1: none, so `mix` or `unmapped = "drop"`
    decides): by `map`, else the app it is named after, else by `streams` (by_hash: one app by
    the stream's hash; per_function: its own app, or none when `--app` left it out). Raises
    ScenarioError when a map entry names no stream."""
    workload = scenario.workload
    problems = unmatched_streams(workload.map, trace)
    if problems:
        raise ScenarioError(scenario.name, problems)
    # Streams are decided by name (a few), then every arrival takes its stream's app by code:
    # one gather instead of a comparison of millions of keys per app and map entry.
    names = np.array(trace.key_names, dtype=object)
    app_of = np.full(len(names), -1, dtype=np.int64)
    mapped = np.zeros(len(names), dtype=bool)
    for stream, app in workload.map.items():
        match = match_stream(names, stream)
        app_of[match] = apps.index(app)
        mapped |= match
    # A stream named like one of the scenario's apps (the `app` column of a requests or
    # call table) is that app's traffic, unless the map says otherwise.
    for code, app in enumerate(apps):
        named = ~mapped & (names == app)
        app_of[named] = code
        mapped |= named
    if workload.streams == "per_function":
        from jsorc_sim.trace_streams import function_names

        code_of = {app: code for code, app in enumerate(apps)}
        own = function_names(list(trace.key_names))
        app_of = np.array([code_of.get(own[n], -1) for n in trace.key_names], dtype=np.int64)
    elif workload.streams == "by_hash" and workload.unmapped == "mix" and not mapped.all():
        from jsorc_sim.trace_streams import hash_apps

        rest = np.flatnonzero(~mapped)
        app_of[rest] = hash_apps([str(names[i]) for i in rest],
                                 [workload.mix.get(app, 0.0) for app in apps],
                                 workload.hash_seed)
    return app_of


def match_stream(keys: np.ndarray, stream: str) -> np.ndarray:
    """Which of `keys` (stream names, or one per arrival) are `stream`: its exact key, or a
    unique prefix of >= 6 characters (so people can write the start of a 64-character hash)."""
    match: np.ndarray = np.asarray(keys == stream, dtype=bool)
    if not match.any() and len(stream) >= 6:
        match = np.array([str(k).startswith(stream) for k in keys], dtype=bool)
    return match


def unmatched_streams(mapping: dict[str, str] | Any, arrivals: Streams) -> list[str]:
    """A problem for each `map` entry that names no stream of the trace."""
    distinct = np.array(arrivals.key_names, dtype=object)
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


def _client(env: simpy.Environment, runtime: Runtime, think_s: float, cpu_s: float,
            pick: Callable[[int], int], samplers: AppSamplers,
            on: Sequence[tuple[float, bool]] = ((0.0, True),),
            ) -> Generator[simpy.Event, Any, None]:
    """A closed-loop client: one request at a time, back to back (JSORC's loadtest).

    Between two requests it spends `cpu_s` on a node core (a load generator on the same
    machine, and its HTTP hop) and then thinks `think_s`; neither is in the latency. `on` is
    (start, whether this client runs) from t = 0 and from each phase on: in a phase it is off
    in, it issues nothing more (its request under way finishes) until the next phase it is
    on in. Its app is drawn by the phase it issues the request in (`pick(phase)`)."""
    serve, cores = runtime.serve, runtime.cores
    starts = [start for start, _ in on]
    phase = 0
    while True:
        if len(on) > 1:
            # Never back: a wait that ends at a phase's start may round to just before it.
            phase = max(phase, bisect.bisect_right(starts, env.now) - 1)
            if not on[phase][1]:
                later = next((j for j in range(phase + 1, len(on)) if on[j][1]), None)
                if later is None:
                    return
                yield env.timeout(starts[later] - env.now)
                phase = later
        app = pick(phase)
        yield from serve(app, 0.0, [draw() for draw in samplers[app]])
        if cpu_s:
            with cores.request() as req:
                yield req
                yield env.timeout(cpu_s)
        if think_s:
            yield env.timeout(think_s)
