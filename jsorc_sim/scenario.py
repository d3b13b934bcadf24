"""Scenarios: what is simulated, as typed data checked when it is loaded.

A scenario is a TOML file (see README, "Scenario format") or built in Python from the
dataclasses below. `load(path)` refuses unknown fields and bad values with one message that
lists every problem, each naming the field path and the value. Every field a scenario does
not need has a default, documented in `docs` of the field and in the README.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies import Mode, Placement, PlacementError

DISTS = ("exp", "const", "lognormal", "gamma", "empirical", "percentiles")
WORKLOADS = ("closed", "poisson", "trace")
STREAM_MODES = ("mix", "by_hash", "per_function")
TRACE_ORIGINS = ("first_arrival", "day")
MEMORY_STATS = ("average", "p50", "p95", "p99", "max")  # jsorc_traces.profiles.MEMORY_STATS
TRACE_FORMATS = ("auto", "requests", "azure2019", "azure2021", "azure_llm2023", "calls")
QUEUES = ("shared", "per_replica")
ON_ERROR = ("keep", "stop")


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; the message lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        head = f"{source}: " if source else ""
        if len(problems) == 1:
            super().__init__(head + problems[0])
        else:
            super().__init__(head + f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def spec(default: Any = dataclasses.MISSING, doc: str = "", *, minimum: float | None = None,
         positive: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A scenario field: default, documentation and the check applied when loading."""
    meta = {"doc": doc, "minimum": minimum, "positive": positive, "choices": choices}
    if isinstance(default, dict):
        snapshot = dict(default)
        return field(default_factory=lambda: dict(snapshot), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Dist:
    """A service-time distribution in ms. `empirical` samples the numbers in `file`."""

    dist: str = spec("exp", "exp | const | lognormal | gamma | empirical", choices=DISTS)
    mean_ms: float = spec(10.0, "mean service time (ms); for empirical, ignored", minimum=0.0)
    cv: float = spec(1.0, "coefficient of variation (lognormal and gamma)", minimum=0.0)
    file: str = spec("", "empirical: a file of samples in ms, one per line or a CSV column")
    column: str = spec("", "empirical: the CSV column to read (default: the first)")
    function: str = spec("", "percentiles: the HashFunction whose row of the Azure durations "
                         "file `file` to follow (jsorc_traces.profiles)")


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """The runtime's machine."""

    cores: int = spec(4, "cores: a walker's compute and each local call hold one", positive=True)
    memory_mb: float = spec(4096.0, "node memory", positive=True)
    runtime_memory_mb: float = spec(300.0, "what the runtime itself uses", minimum=0.0)
    # > 0: with an instant restart a closed-loop client that keeps running the node out of
    # memory would loop forever at one instant of simulated time.
    restart_s: float = spec(30.0, "runtime restart time after out-of-memory", positive=True)
    # Off by default: replicas on machines of their own. On one machine (the live system on a
    # laptop) the replica processes compete with the runtime for the same cores.
    replicas_share_cores: bool = spec(False, "a remote replica's service also holds one of "
                                      "these cores while it runs")
    network_holds_core: bool = spec(False, "a remote call's network time also holds one of "
                                    "these cores (replicas on loopback: the hop is CPU)")
    # The runtime is one Python process: its own work (walker compute, local calls) may run
    # on fewer cores at once than the machine has (the GIL). None: as many as `cores`.
    runtime_cores: int | None = spec(None, "cores the runtime's walker compute and local calls "
                                     "may use at once (default: cores)", positive=True)


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """Between the runtime and remote replicas."""

    rtt_ms: float = spec(0.0, "round-trip time added to each remote call", minimum=0.0)
    bandwidth_mbps: float = spec(1000.0, "link speed for payloads", positive=True)


@dataclass(frozen=True, kw_only=True)
class ActionSpec:
    """One action: its memory, start-up times and service time."""

    name: str = ""
    service: Dist = spec(dataclasses.MISSING, "service-time distribution (required)")
    local_memory_mb: float = spec(0.0, "memory of a local copy on the node", minimum=0.0)
    local_load_s: float = spec(0.0, "time to load the action locally", minimum=0.0)
    remote_start_s: float = spec(0.0, "time until a new replica is ready", minimum=0.0)
    remote_memory_mb: float | None = spec(None, "memory of one replica (default: "
                                          "local_memory_mb)", minimum=0.0)
    remote_cores: int = spec(1, "calls one replica serves at once", positive=True)
    local_slowdown: float = spec(1.0, "factor on service time when run on the node",
                                 positive=True)
    payload_kb: float = spec(0.0, "request+response size of a remote call", minimum=0.0)
    per_size_ms: float = spec(0.0, "service ms added per unit of a call's size", minimum=0.0)
    startup_cv: float = spec(0.0, "cv of load/start times (0: constant; else lognormal)",
                             minimum=0.0)
    default_mode: str = spec("local", "mode used when an unloaded action is called",
                             choices=("local", "remote"))
    remote_queue: str = spec("shared", "shared: one FIFO per action (M/M/c); per_replica: "
                             "round-robin onto per-replica queues", choices=QUEUES)

    @property
    def replica_memory_mb(self) -> float:
        return self.local_memory_mb if self.remote_memory_mb is None else self.remote_memory_mb


@dataclass(frozen=True, kw_only=True)
class AppSpec:
    """A walker: its own compute, then its action calls in order."""

    name: str = ""
    calls: tuple[str, ...] = spec(dataclasses.MISSING, "action calls in order (required)")
    compute_ms: float = spec(0.0, "the walker's own work on a node core, before its calls",
                             minimum=0.0)


@dataclass(frozen=True, kw_only=True)
class PhaseSpec:
    """From `start_s` on, the workload changes: what a phase leaves out stays as it was.

    A request's app is drawn by the mix of the phase it is issued in."""

    start_s: float = spec(dataclasses.MISSING, "when the phase begins (simulated s, > 0, "
                          "< duration_s; after the phase before)", positive=True)
    mix: Mapping[str, float] = spec({}, "app -> weight from start_s on (default: unchanged)")
    clients: int | None = spec(None, "closed: clients from start_s on (more start then; of "
                               "fewer, the extra stop after their request)", positive=True)
    rate_per_s: float | None = spec(None, "poisson: arrival rate from start_s on",
                                    positive=True)


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """Where requests come from."""

    kind: str = spec("closed", "closed | poisson | trace", choices=WORKLOADS)
    clients: int = spec(1, "closed: clients calling back to back", positive=True)
    think_ms: float = spec(0.0, "closed: pause between a client's requests", minimum=0.0)
    client_cpu_ms: float = spec(0.0, "closed: a client's CPU on a node core between its "
                                "requests (load generator on the same machine); not in latency",
                                minimum=0.0)
    rate_per_s: float = spec(1.0, "poisson: arrival rate", positive=True)
    trace: str = spec("", "trace: path (relative to the scenario file)")
    trace_format: str = spec("auto", "auto | requests | azure2019 | azure2021 | azure_llm2023 | "
                             "calls",
                             choices=TRACE_FORMATS)
    spread: str = spec("uniform", "per-minute traces: uniform (seeded) | even",
                       choices=("uniform", "even"))
    llm_size: str = spec("total", "LLM trace size: total | context | generated tokens",
                         choices=("total", "context", "generated"))
    time_scale: float = spec(1.0, "trace: multiply arrival times (0.5 replays twice as fast)",
                             positive=True)
    mix: Mapping[str, float] = spec({}, "app -> weight for each arrival (default: equal)")
    map: Mapping[str, str] = spec({}, "trace stream (function, or a unique prefix of at "
                                  "least 6 characters) -> app")
    unmapped: str = spec("mix", "trace streams with no map entry: mix (an app by weight) | drop",
                         choices=("mix", "drop"))
    streams: str = spec("mix", "how an unmapped stream gets its app: mix (a draw per arrival) | "
                        "by_hash (one app per stream, by a seeded hash of its name) | "
                        "per_function (an app and an action of its own)", choices=STREAM_MODES)
    hash_seed: int = spec(0, "by_hash: the hash's seed (not the run's seed: a stream keeps its "
                          "app across runs)", minimum=0)
    trace_origin: str = spec("first_arrival", "time 0 of a replay: the trace's first arrival | "
                             "day (the start of its first day on the trace's clock)",
                             choices=TRACE_ORIGINS)
    durations: str = spec("", "per_function: an Azure durations file (percentile_Average_*): "
                          "each function's service time follows its row")
    memory: str = spec("", "per_function: an Azure memory file: each function's memory from "
                       "its app's row (memory_stat)")
    memory_stat: str = spec("p99", "memory file column: average | p50 | p95 | p99 | max",
                            choices=MEMORY_STATS)
    template: str = spec("", "per_function: the action each function's action copies "
                         "(default: the first)")
    phases: tuple[PhaseSpec, ...] = spec((), "[[workload.phases]]: changes of the mix, "
                                         "clients or rate from a time on")

    def in_force(self) -> tuple[PhaseSpec, ...]:
        """The workload from t = 0 and from each phase's start on, every field filled in
        (what a phase leaves out carried over from the one before); the first starts at 0."""
        now = PhaseSpec(start_s=0.0, mix=dict(self.mix), clients=self.clients,
                        rate_per_s=self.rate_per_s)
        out = [now]
        for phase in self.phases:
            now = PhaseSpec(start_s=phase.start_s, mix=dict(phase.mix or now.mix),
                            clients=phase.clients or now.clients,
                            rate_per_s=phase.rate_per_s or now.rate_per_s)
            out.append(now)
        return tuple(out)


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """The policy the controller runs."""

    name: str = spec("none", "registered name or module:Class; none keeps the placement")
    interval_s: float = spec(10.0, "control interval", positive=True)
    params: Mapping[str, Any] = spec({}, "policy parameters")
    on_error: str = spec("keep", "a policy that raises: keep the placement, or stop the run",
                         choices=ON_ERROR)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str = "scenario"
    seed: int = spec(0, "seed of every random stream (arrivals, service, start-up)", minimum=0)
    duration_s: float = spec(600.0, "simulated seconds", positive=True)
    warmup_s: float = spec(0.0, "excluded from reports", minimum=0.0)
    timeline_s: float = spec(10.0, "timeline sampling period", positive=True)
    node: NodeSpec = field(default_factory=NodeSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    actions: Mapping[str, ActionSpec] = field(default_factory=dict)
    apps: Mapping[str, AppSpec] = field(default_factory=dict)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    placement: Mapping[str, Placement] = field(default_factory=dict)
    policy: PolicySpec = field(default_factory=PolicySpec)
    base_dir: str = "."  # where relative paths (traces, samples) are resolved; not a TOML field

    def for_app(self, app: str) -> Scenario:
        """The same scenario with only `app` in the workload (and only the actions it calls)."""
        if app not in self.apps:
            raise ScenarioError(self.name, [f"--app: unknown app {app!r}; apps: "
                                            f"{', '.join(self.apps)}"])
        used = set(self.apps[app].calls)
        mapped = {k: v for k, v in self.workload.map.items() if v == app}
        # With a map, only the streams mapped to `app` are that app's traffic.
        unmapped = "drop" if self.workload.map else self.workload.unmapped
        # One app leaves nothing to mix: the phases' mixes go, and a phase that changed only
        # its mix with them; a step of the clients or the rate still applies.
        phases = tuple(dataclasses.replace(p, mix={}) for p in self.workload.phases
                       if p.clients is not None or p.rate_per_s is not None)
        workload = dataclasses.replace(self.workload, mix={app: 1.0}, map=mapped,
                                       unmapped=unmapped, phases=phases)
        return dataclasses.replace(
            self,
            apps={app: self.apps[app]},
            actions={n: a for n, a in self.actions.items() if n in used},
            placement={n: p for n, p in self.placement.items() if n in used},
            workload=workload,
        )

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a TOML-ready table (defaults included, so it is fully resolved)."""
        workload = _plain(self.workload)
        # A run cut short (`simulate(duration_s=...)`) never reaches a phase at or past its
        # end: left out, so the saved scenario loads and repeats the run. No phases, no key:
        # a scenario without them saves as it did before there were any.
        workload["phases"] = [p for p in workload["phases"] if p["start_s"] < self.duration_s]
        if not workload["phases"]:
            del workload["phases"]
        out: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "timeline_s": self.timeline_s,
            "node": dataclasses.asdict(self.node),
            "network": dataclasses.asdict(self.network),
            "actions": {n: _plain(a, skip=("name",)) for n, a in self.actions.items()},
            "apps": {n: _plain(a, skip=("name",)) for n, a in self.apps.items()},
            "workload": workload,
            "placement": {n: str(p) for n, p in self.placement.items()},
            "policy": _plain(self.policy),
        }
        return out


def _plain(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = [_plain(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


# ----------------------------------------------------------------------------- loading


def read_toml(path: Path,
              error: Callable[[str, list[str]], Exception]) -> tuple[str, dict[str, Any]]:
    """A TOML file's text and table; `error(source, problems)` is raised if it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(str(path), [f"not valid TOML: {exc}"]) from None


def set_path(table: dict[str, Any], path: str, value: Any) -> str | None:
    """Set a dotted field path ("node.memory_mb") in a scenario table; a problem or None.

    Only the tables on the way must exist: the leaf is checked when the table is loaded, so
    an unknown field is reported by the same message as in a scenario file."""
    *parents, leaf = path.split(".")
    node = table
    for i, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            return f"no table {'.'.join(parents[:i + 1])!r} on the way to {path!r}"
        node = child
    node[leaf] = value
    return None


def override(scenario: Scenario, overrides: Mapping[str, Any], *, source: str,
             label: Callable[[str], str] | None = None) -> Scenario:
    """`scenario` with dotted overrides ({"workload.clients": 8}) set in its table and the
    table checked again by `from_dict`, relative paths resolving from its `base_dir` as before.

    Raises one ScenarioError from `source` naming every bad path or value; `label(path)`, when
    given, heads each path's problem (say, the key as its file spells it)."""
    table = scenario.to_dict()
    problems = []
    for path, value in overrides.items():
        problem = set_path(table, path, value)
        if problem:
            problems.append(f"{label(path)}: {problem}" if label else problem)
    if problems:
        raise ScenarioError(source, problems)
    return from_dict(table, source=source, base_dir=scenario.base_dir)


def parse_value(text: str) -> Any:
    """A value written as in a TOML file (`8` an int, `"x"` a string, `true` a bool, `[1, 2]`
    a list); text that is not one TOML value is taken as a string (`poisson`)."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["value"] if len(parsed) == 1 else text


def load(path: str | Path) -> Scenario:
    """Read and check a scenario TOML file."""
    path = Path(path)
    _text, raw = read_toml(path, ScenarioError)
    raw.setdefault("name", path.stem)
    return from_dict(raw, source=str(path), base_dir=str(path.parent))


def from_dict(raw: Mapping[str, Any], *, source: str = "scenario", base_dir: str = ".") -> Scenario:
    """Build and check a scenario from a TOML-like table; raises ScenarioError listing problems."""
    problems: list[str] = []
    sections = ("node", "network", "actions", "apps", "workload", "placement", "policy")
    top = _fields(Scenario, raw, "", problems, skip=(*sections, "base_dir"),
                  allowed=sections)
    node = _section(NodeSpec, raw.get("node", {}), "node", problems)
    network = _section(NetworkSpec, raw.get("network", {}), "network", problems)
    actions = {}
    for name, table in _tables(raw.get("actions", {}), "actions", problems).items():
        actions[name] = _action(name, table, problems)
    apps = {}
    for name, table in _tables(raw.get("apps", {}), "apps", problems).items():
        apps[name] = _app(name, table, actions, problems)
    workload = _workload(raw.get("workload", {}), apps, top.get("duration_s", 600.0), problems)
    placement = _placement(raw.get("placement", {}), actions, problems)
    policy = _section(PolicySpec, raw.get("policy", {}), "policy", problems)
    if not actions:
        problems.append("[actions]: a scenario needs at least one action")
    if not apps:
        problems.append("[apps]: a scenario needs at least one app")
    if node.runtime_memory_mb >= node.memory_mb:
        problems.append(f"node.runtime_memory_mb = {node.runtime_memory_mb:g} leaves no room in "
                        f"node.memory_mb = {node.memory_mb:g}")
    if top.get("warmup_s", 0.0) >= top.get("duration_s", 600.0):
        problems.append(f"warmup_s = {top.get('warmup_s')} must be below duration_s = "
                        f"{top.get('duration_s', 600.0)}")
    if problems:
        raise ScenarioError(source, problems)
    scenario = Scenario(node=node, network=network, actions=actions, apps=apps,
                        workload=workload, placement=placement, policy=policy,
                        base_dir=base_dir, **top)
    _check_files(scenario, source)
    if workload.streams == "per_function":
        # Reads the trace's stream names (and the durations/memory files): only these
        # scenarios pay for jsorc_traces at load time.
        from jsorc_sim.trace_streams import per_function
        from jsorc_traces import TraceError

        try:
            scenario = per_function(scenario, source)
        except TraceError as exc:  # a bad trace, durations or memory file is the scenario's
            raise ScenarioError(source, [str(exc)]) from None
    return scenario


def _tables(value: Any, where: str, problems: list[str]) -> dict[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping):
        problems.append(f"[{where}] must be a table, got {value!r}")
        return {}
    out = {}
    for name, table in value.items():
        if not isinstance(table, Mapping):
            problems.append(f"[{where}.{name}] must be a table, got {table!r}")
        else:
            out[name] = table
    return out


def _section(cls: type, value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(f"[{where}] must be a table, got {value!r}")
        value = {}
    return cls(**_fields(cls, value, where, problems))


def _fields(cls: type, table: Mapping[str, Any], where: str, problems: list[str],
            skip: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the scalar and mapping fields of `cls` in `table`; unknown keys are problems.

    `skip` fields are checked elsewhere; `allowed` (default: `skip`) are the keys of those
    that may appear in the table.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = typing.get_type_hints(cls)
    label = f"[{where}] " if where else ""
    elsewhere = skip if allowed is None else allowed
    for key in table:
        if key not in fields and key not in elsewhere:
            known = ", ".join(sorted((*fields, *elsewhere)))
            problems.append(f"{label}unknown field {key!r} (known: {known})")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{label}missing required field {name!r}")
            continue
        value = _check_value(table[name], hints[name], f, f"{where}.{name}" if where else name,
                             problems)
        if value is not _BAD:
            out[name] = value
    return out


_BAD = object()


def _check_value(value: Any, hint: Any, f: dataclasses.Field[Any], where: str,
                 problems: list[str]) -> Any:
    meta = f.metadata
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(optional) == 1:
        if value is None:
            return None
        hint = optional[0]  # an optional field that is given is checked as its type
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{where} must be true or false, got {value!r}")
            return _BAD
        return value
    if hint is float or hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where} must be a number, got {value!r}")
            return _BAD
        if hint is int and not float(value).is_integer():
            problems.append(f"{where} must be a whole number, got {value!r}")
            return _BAD
        if not math.isfinite(value):
            problems.append(f"{where} must be finite, got {value!r}")
            return _BAD
        if meta.get("positive") and value <= 0:
            problems.append(f"{where} must be > 0, got {value!r}")
            return _BAD
        minimum = meta.get("minimum")
        if minimum is not None and value < minimum:
            problems.append(f"{where} must be >= {minimum}, got {value!r}")
            return _BAD
        return int(value) if hint is int else float(value)
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{where} must be a string, got {value!r}")
            return _BAD
        choices = meta.get("choices")
        if choices and value not in choices:
            problems.append(f"{where} must be one of {', '.join(choices)}; got {value!r}")
            return _BAD
        return value
    if typing.get_origin(hint) in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            problems.append(f"{where} must be a table, got {value!r}")
            return _BAD
        # TOML has nan and inf literals; no table here (policy parameters, mix weights)
        # takes them, and each is named by its dotted path rather than by the policy later.
        bad = non_finite(value, where)
        if bad:
            problems.extend(bad)
            return _BAD
        return dict(value)
    return value


def non_finite(value: Any, where: str) -> list[str]:
    """A problem for every NaN or infinity in `value` (tables and lists, at any depth)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where} must be finite, got {value!r}"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in non_finite(v, f"{where}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{where}[{i}]")]
    return []


def _action(name: str, table: Mapping[str, Any], problems: list[str]) -> ActionSpec:
    values = _fields(ActionSpec, table, f"actions.{name}", problems, skip=("name", "service"))
    service = table.get("service")
    if service is None:
        problems.append(f"[actions.{name}] missing required field 'service'")
        dist = Dist()
    elif not isinstance(service, Mapping):
        problems.append(f"actions.{name}.service must be a table like "
                        f"{{ dist = \"exp\", mean_ms = 10 }}, got {service!r}")
        dist = Dist()
    else:
        dist = _section(Dist, service, f"actions.{name}.service", problems)
        if dist.dist in ("empirical", "percentiles") and not dist.file:
            problems.append(f"actions.{name}.service: {dist.dist} needs file = \"...\"")
        if dist.dist == "percentiles" and not dist.function:
            problems.append(f"actions.{name}.service: percentiles needs function = \"...\"")
        if dist.dist not in ("empirical", "percentiles") and dist.mean_ms <= 0:
            problems.append(f"actions.{name}.service.mean_ms must be > 0, got {dist.mean_ms}")
    return ActionSpec(name=name, service=dist, **values)


def _app(name: str, table: Mapping[str, Any], actions: Mapping[str, ActionSpec],
         problems: list[str]) -> AppSpec:
    values = _fields(AppSpec, table, f"apps.{name}", problems, skip=("name", "calls"))
    calls = table.get("calls")
    if calls is None:
        problems.append(f"[apps.{name}] missing required field 'calls'")
        calls = []
    elif not isinstance(calls, list) or not all(isinstance(c, str) for c in calls):
        problems.append(f"apps.{name}.calls must be a list of action names, got {calls!r}")
        calls = []
    for call in calls:
        if call not in actions:
            problems.append(f"apps.{name}.calls: unknown action {call!r} "
                            f"(actions: {', '.join(actions) or 'none'})")
    return AppSpec(name=name, calls=tuple(calls), **values)


def _workload(value: Any, apps: Mapping[str, AppSpec], duration_s: float,
              problems: list[str]) -> WorkloadSpec:
    if not isinstance(value, Mapping):
        problems.append(f"[workload] must be a table, got {value!r}")
        value = {}
    workload = WorkloadSpec(**_fields(WorkloadSpec, value, "workload", problems,
                                      skip=("phases",)))
    problems.extend(_mix_problems(workload.mix, apps, "workload.mix"))
    workload = dataclasses.replace(
        workload, phases=_phases(value.get("phases", []), workload, apps, duration_s, problems))
    for stream, app in workload.map.items():
        if app not in apps:
            problems.append(f"workload.map.{stream}: unknown app {app!r}")
    if workload.kind == "trace" and not workload.trace:
        problems.append("workload.trace: kind = \"trace\" needs trace = \"path\"")
    problems.extend(_stream_problems(workload))
    return dataclasses.replace(workload, mix=_weights(workload.mix) or {a: 1.0 for a in apps})


def _weights(mix: Mapping[str, Any]) -> dict[str, Any]:
    # Only numbers are converted: anything else is already a problem, named by _mix_problems.
    return {a: float(w) if isinstance(w, int | float) else w for a, w in mix.items()}


def _mix_problems(mix: Mapping[str, Any], apps: Mapping[str, AppSpec], where: str) -> list[str]:
    problems = []
    for app, weight in mix.items():
        if app not in apps:
            problems.append(f"{where}: unknown app {app!r} (apps: {', '.join(apps)})")
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            problems.append(f"{where}.{app} must be a weight >= 0, got {weight!r}")
    if mix and not sum(float(w) for w in mix.values() if isinstance(w, int | float)) > 0:
        problems.append(f"{where}: the weights sum to 0")
    return problems


def _phases(value: Any, workload: WorkloadSpec, apps: Mapping[str, AppSpec], duration_s: float,
            problems: list[str]) -> tuple[PhaseSpec, ...]:
    """The `[[workload.phases]]`, checked: each changes something its workload kind has, and
    they start in order inside the run."""
    if not isinstance(value, list | tuple):
        problems.append(f"workload.phases must be a list of tables ([[workload.phases]]), "
                        f"got {value!r}")
        return ()
    if value and workload.kind == "trace" and (workload.unmapped, workload.streams) != ("mix",
                                                                                      "mix"):
        problems.append(f"workload.phases change the mix that unmapped streams draw from; "
                        f"with unmapped = {workload.unmapped!r} and streams = "
                        f"{workload.streams!r} no arrival draws from it")
    phases: list[PhaseSpec] = []
    last = 0.0
    for i, table in enumerate(value):
        where = f"workload.phases[{i}]"
        if not isinstance(table, Mapping):
            problems.append(f"{where} must be a table, got {table!r}")
            continue
        values = _fields(PhaseSpec, table, where, problems)
        if "start_s" not in values:
            continue
        phase = PhaseSpec(**values)
        if phase.start_s <= last and phases:
            problems.append(f"{where}.start_s = {phase.start_s:g} must be after "
                            f"workload.phases[{i - 1}].start_s = {last:g}")
        if phase.start_s >= duration_s:
            problems.append(f"{where}.start_s = {phase.start_s:g} is at or past the end of the "
                            f"run (duration_s = {duration_s:g})")
        problems.extend(_mix_problems(phase.mix, apps, f"{where}.mix"))
        for name, kind in (("clients", "closed"), ("rate_per_s", "poisson")):
            if getattr(phase, name) is not None and workload.kind != kind:
                problems.append(f"{where}.{name} needs kind = {kind!r}, got kind = "
                                f"{workload.kind!r}")
        if not (table.get("mix") or "clients" in table or "rate_per_s" in table):
            problems.append(f"{where} changes nothing: give mix, clients or rate_per_s")
        phases.append(dataclasses.replace(phase, mix=_weights(phase.mix)))
        last = phase.start_s
    return tuple(phases)


def _stream_problems(workload: WorkloadSpec) -> list[str]:
    """Trace stream options that contradict each other (jsorc_sim.trace_streams)."""
    problems = []
    per_function = workload.streams == "per_function"
    for name in ("durations", "memory", "template"):
        if getattr(workload, name) and not per_function:
            problems.append(f"workload.{name} needs streams = \"per_function\" (each function "
                            f"its own action), got streams = {workload.streams!r}")
    if per_function and workload.map:
        problems.append("workload.map has no use with streams = \"per_function\" (every stream "
                        "is an app of its own)")
    if workload.streams != "mix" and workload.unmapped == "drop" and not per_function:
        problems.append(f"workload.unmapped = \"drop\" leaves nothing for streams = "
                        f"{workload.streams!r} to map")
    if workload.streams != "mix" and workload.kind != "trace":
        problems.append(f"workload.streams = {workload.streams!r} needs kind = \"trace\"")
    return problems


def _placement(value: Any, actions: Mapping[str, ActionSpec],
               problems: list[str]) -> dict[str, Placement]:
    if not isinstance(value, Mapping):
        problems.append(f"[placement] must be a table, got {value!r}")
        return {}
    out = {}
    for name, entry in value.items():
        if name not in actions:
            problems.append(f"placement: unknown action {name!r}")
            continue
        try:
            if isinstance(entry, str):
                out[name] = Placement.parse(entry)
            elif isinstance(entry, Mapping):
                extra = set(entry) - {"mode", "replicas"}
                if extra:
                    problems.append(f"placement.{name}: unknown field {sorted(extra)[0]!r}")
                    continue
                mode = entry.get("mode", "")
                replicas = entry.get("replicas", 1 if mode == Mode.REMOTE else 0)
                out[name] = Placement(mode, replicas)
            else:
                problems.append(f"placement.{name} must be \"local\", \"remote:N\" or a table, "
                                f"got {entry!r}")
        except PlacementError as exc:
            problems.append(f"placement.{name}: {exc}")
    return out


def _check_files(scenario: Scenario, source: str) -> None:
    problems = []
    if scenario.workload.kind == "trace":
        path = scenario.resolve(scenario.workload.trace)
        if not path.is_file():
            problems.append(f"workload.trace: no such file {str(path)!r}")
        for name in ("durations", "memory"):
            extra = getattr(scenario.workload, name)
            if extra and not scenario.resolve(extra).is_file():
                problems.append(f"workload.{name}: no such file "
                                f"{str(scenario.resolve(extra))!r}")
    for action in scenario.actions.values():
        if action.service.dist in ("empirical", "percentiles"):
            path = scenario.resolve(action.service.file)
            if not path.is_file():
                problems.append(f"actions.{action.name}.service.file: no such file {str(path)!r}")
    if problems:
        raise ScenarioError(source, problems)
