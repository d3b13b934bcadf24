"""`jsorc-sim`: simulate a scenario, run experiments, tune policies, list policies.

    jsorc-sim run SCENARIO.toml [--app NAME] [--policy NAME|module:Class|file.py:Class]
                  [--param k=v]... [--set dotted.path=value]... [--duration S] [--seed N]
                  [--out DIR] [--json] [--record {calls,requests,none}] [--fast {auto,on,off}]
                  [--strict]
    jsorc-sim policies [--json]
    jsorc-sim trace info FILE [--format F] [--top N] [--json] [--plot PNG]
    jsorc-sim experiment FILE.toml [--workers N] [--scheduler ADDR] [--out DIR] ...
    jsorc-sim tune FILE.toml [--workers N] [--scheduler ADDR] [--out DIR] ...
    jsorc-sim bound SCENARIO.toml [--app A] [--seed N] [--set k=v]... [--duration S]
                    [--stretches K] [--objective EXPR] [--ladder 1,2,4,8] [--workers N]
                    [--json] [--out DIR]
    jsorc-sim compare FILE.toml [--out DIR] [--workers N] [--traces DIR] [--quick]
    jsorc-sim calibrate DIR [DIR ...] --out SCENARIO.toml [--base SCENARIO.toml]
    jsorc-sim validate [--out DIR] [--short] [--duration S] [--set dotted.path=value]...
                       [--reuse-runs]

Bad input (a scenario, trace, policy or parameter that cannot be used) exits with code 2 and
one message naming the bad value; nothing is written to --out then. A run in which policy
decisions failed says so on stderr (how many, and the first error with its file and line)
and exits 0, or 1 with --strict.

--out DIR (`.` included) receives only jsorc's own files (the tables, report.json,
scenario.toml and manifest.json, which records what jsorc wrote); other files there are left
alone. A file of one of those names that jsorc did not write is refused before simulating
(exit 2): jsorc never overwrites or deletes a file it did not write.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from jsorc_sim.fastpath import FastPathError
from jsorc_sim.outputs import OutputError
from jsorc_sim.recorder import RECORD_MODES
from jsorc_sim.results import check_out
from jsorc_sim.scenario import ScenarioError, parse_value
from jsorc_sim.simulate import simulate
from policies import PlacementError, PolicyError, describe, names, package_of, resolve

EXIT_BAD_INPUT = 2
UNFINISHED_WARNING = 0.01  # warn when more than this share of arrivals is unfinished
#: The commands whose parser this module builds itself. experiment, tune and validate build
#: their own, and are imported only when the command line is not one of these (one of
#: theirs, --help, a typo): `jsorc-sim run` would spend ~60 ms of its start-up on them.
OWN_COMMANDS = ("run", "calibrate", "policies", "trace")


class BadInput(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level parser takes no option but --help and --version, so a command comes first.
    parser = _parser(others=not argv or argv[0] not in OWN_COMMANDS)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except BadInput as exc:
        print(f"jsorc-sim: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ScenarioError, PolicyError, PlacementError, OutputError, FastPathError) as exc:
        # These name the file, field, line or parameter themselves. Anything else is a bug
        # and keeps its traceback.
        print(f"jsorc-sim: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if not _bad_input_elsewhere(exc):
            raise
        print(f"jsorc-sim: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jsorc-sim: interrupted; nothing written", file=sys.stderr)
        return 130


def _bad_input_elsewhere(exc: Exception) -> bool:
    """Whether `exc` is bad input from a module that a run need not import: they are imported
    here, on the way out, not at every start (jsorc_traces alone brings pandas and pyarrow,
    ~0.35 s). The module that raised `exc` is loaded already, so its import is free."""
    from jsorc_sim.experiment import ExperimentError
    from jsorc_sim.validate import ValidateError

    if isinstance(exc, ExperimentError | ValidateError):
        return True
    from jsorc_traces import TraceError

    return isinstance(exc, TraceError)


def _parser(others: bool = True) -> argparse.ArgumentParser:
    """The command line; without `others`, only the commands this module builds itself."""
    parser = argparse.ArgumentParser(prog="jsorc-sim", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="print jsorc's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate a scenario and print JSORC's benchmark report")
    run.add_argument("scenario", help="scenario TOML file")
    run.add_argument("--app", help="restrict the workload to one app")
    run.add_argument("--policy", help="policy name, module:Class or path/to/file.py:Class "
                     "(a path from the current folder; default: the scenario's)")
    run.add_argument("--param", action="append", default=[], metavar="K=V",
                     help="policy parameter, repeatable")
    run.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                     dest="overrides",
                     help="override a scenario field, as an experiment file's set does "
                     "(workload.clients=8, node.memory_mb=6144); the value is read as TOML "
                     "(8 a number, \"x\" or x a string, true a bool); repeatable")
    run.add_argument("--duration", type=float, help="simulated seconds (default: scenario's)")
    run.add_argument("--seed", type=int, help="random seed (default: scenario's, else 0)")
    run.add_argument("--out", metavar="DIR",
                     help="write tables (Parquet), report.json, scenario.toml and manifest.json "
                     "into DIR (created if need be; other files there are left alone, and a "
                     "file of those names that jsorc did not write is refused before the run)")
    run.add_argument("--record", choices=RECORD_MODES, default="calls",
                     help="which tables to keep: calls (every table; the default), requests "
                     "(all but calls) or none (neither: the report's percentiles then come "
                     "from a sketch, within 0.5 %%). With --out, kept calls and requests "
                     "stream to DIR as the run goes, so memory does not grow with them")
    run.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                     help="the engine: auto (the default) solves stretches where the placement "
                     "stays put as queues where the scenario allows it and runs SimPy "
                     "elsewhere; off runs SimPy only; on is auto but refuses a scenario the "
                     "fast path can never run. The report says which path ran")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--strict", action="store_true",
                     help="exit 1 when any policy decision failed (raised, or returned "
                     "something that is not a valid Decision); without it the run exits 0 "
                     "and says so on stderr")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.set_defaults(handler=_run)

    if others:
        from jsorc_sim import clairvoyant, compare, experiment, tune, validate

        experiment.add_parser(sub)
        tune.add_parser(sub)
        clairvoyant.add_parser(sub)
        compare.add_parser(sub)
        validate.add_parser(sub)

    cal = sub.add_parser("calibrate", help="fit a scenario to live loadtest folders",
                         description="Fit service, network, start-up and compute times, memory "
                         "and the node's effective cores to `jsorc loadtest --out` folders and "
                         "write a scenario that reproduces the run, each value annotated.")
    cal.add_argument("folders", nargs="+", metavar="DIR", help="loadtest folders")
    cal.add_argument("--out", required=True, metavar="SCENARIO.toml",
                     help="the scenario to write (empirical samples go beside it)")
    cal.add_argument("--base", metavar="SCENARIO.toml",
                     help="keep this scenario's values where the runs are too few to fit")
    cal.set_defaults(handler=_calibrate)

    _add_trace_parser(sub)

    pol = sub.add_parser("policies", help="list every policy with its parameters and defaults")
    pol.add_argument("--json", action="store_true", help="print the list as JSON")
    pol.set_defaults(handler=_policies)
    return parser


def _add_trace_parser(sub: Any) -> None:
    """`jsorc-sim trace info`; its logic (and pandas) is imported only when it runs."""
    trace = sub.add_parser("trace", help="look at a trace file before replaying it")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True)
    info = trace_sub.add_parser(
        "info", help="what a trace holds: format, streams, calls, span, rate over time",
        description="Format detected, streams (count, the busiest by calls with their share), "
        "total calls, span, mean and peak (busiest minute) rate, and the rate over time. "
        "Per-minute files are read as counts, never expanded. A bad file exits 2.")
    info.add_argument("file", help="trace file (any format of the README's Trace formats)")
    info.add_argument("--format", default="auto", dest="trace_format",
                      choices=("auto", "requests", "azure2019", "azure2021", "azure_llm2023",
                               "calls"), help="the trace's format (default: detected)")
    info.add_argument("--top", type=int, default=10, help="busiest streams listed (10)")
    info.add_argument("--json", action="store_true", help="print the info as JSON")
    info.add_argument("--plot", metavar="PNG", help="also draw calls/s per minute into PNG")
    info.set_defaults(handler=_trace_info)


def _trace_info(args: argparse.Namespace) -> int:
    from jsorc_sim.trace_info import format_info, plot_rate, trace_info

    if args.top < 1:
        raise BadInput(f"--top must be >= 1, got {args.top}")
    info = trace_info(args.file, args.trace_format, top=args.top)
    print(json.dumps(info.to_json(), indent=2) if args.json else format_info(info))
    if args.plot:
        try:
            plot_rate(info, args.plot)
        except OSError as exc:
            raise BadInput(f"--plot {args.plot}: cannot write: {exc.strerror or exc}") from None
        if not args.json:
            print(f"\nwrote {args.plot}")
    return 0


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked (an import
    that every start would pay otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("jsorc")
        except PackageNotFoundError:
            number = "unknown (not installed: pip install -e .)"
        print(f"{parser.prog} {number}")
        parser.exit()


def parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"--param must look like key=value, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set` pairs as {dotted path: value}, each value read as TOML (see parse_value)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        path, eq, value = pair.partition("=")
        path = path.strip()
        if not eq or not path or any(not part for part in path.split(".")):
            raise BadInput(f"--set must look like dotted.path=value, got {pair!r}")
        overrides[path] = parse_value(value.strip())
    return overrides


def _run(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    overrides = parse_overrides(args.overrides)
    if params and not args.policy:
        raise BadInput("--param needs --policy (the scenario's own parameters are in its file)")
    if args.seed is not None and args.seed < 0:
        raise BadInput(f"--seed must be >= 0, got {args.seed}")
    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        raise BadInput(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.out:
        check_out(args.out)  # before simulating: a refusal costs nothing
    # With --out, the tables stream there during the run and simulate saves the run.
    result = simulate(args.scenario, args.policy, params=params, seed=args.seed,
                      duration_s=args.duration, app=args.app, overrides=overrides,
                      progress=not args.no_progress and sys.stderr.isatty(),
                      record=args.record, out=args.out or None, fast=args.fast)
    report = result.report()
    warning = unfinished_warning(report)
    if warning:
        print(f"jsorc-sim: warning: {warning}", file=sys.stderr)
    failures = policy_failures(result.policy, result.recorder.events,
                               result.recorder.policy_steps)
    if failures and result.status == "ok":  # a stopped run's own line below names its error
        print(f"jsorc-sim: {failures}", file=sys.stderr)
    for warning in report.get("warnings", []):  # the run's own (Result.report, warm-up)
        print(f"jsorc-sim: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(result.scenario.name, result.policy, report, result.status))
        print(format_engine(result.extra["engine"]))
        if args.out:
            tables = {"calls": "calls, requests, ", "requests": "requests, ", "none": ""}
            print(f"\nwrote {args.out}/: {tables[args.record]}decisions, timeline, events "
                  "(.parquet), report.json, scenario.toml, manifest.json")
    if result.status != "ok":
        print(f"jsorc-sim: {result.status}", file=sys.stderr)
        return 1
    return 1 if failures and args.strict else 0


def policy_failures(policy: str, events: Sequence[Mapping[str, Any]], decisions: int) -> str:
    """One line when any decision failed: how many, of how many, and the first error (its
    message names the file and line), else "". `events` are the run's events table rows."""
    failed = [e for e in events if e["kind"] == "policy_error"]
    if not failed:
        return ""
    first = failed[0]
    return (f"policy {policy!r} failed {len(failed)} times (of {decisions} decisions); first "
            f"at t={float(first['ts']):g} s: {first['detail']}")


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jsorc_sim.calibrate import CalibrationError, calibrate

    try:
        result = calibrate([Path(f) for f in args.folders],
                           base=Path(args.base) if args.base else None)
    except CalibrationError as exc:
        raise BadInput(str(exc)) from None
    try:
        result.write(args.out)
    except OSError as exc:
        raise BadInput(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    print(result.table())
    print(f"\nwrote {args.out}" + (f" and {len(result.samples)} sample file(s) beside it"
                                   if result.samples else ""))
    return 0


def format_report(scenario: str, policy: str, report: dict[str, Any], status: str = "ok") -> str:
    """The report as a table a person reads: one row per app, latency in ms."""
    header = ("app", "throughput/s", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms")
    keys = ("throughput", "average_latency", "50th_latency", "90th_latency", "95th_latency",
            "99th_latency")
    rows = [header]
    for app, stats in report["walker_run"].items():
        rows.append((app, *(_fmt(stats[k]) for k in keys)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"scenario {scenario} | policy {policy}" + ("" if status == "ok" else f" | {status}")]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    cost = report["cost"]
    lines.append("")
    lines.append("cost: " + ", ".join(f"{k} {v}" for k, v in cost.items()))
    unfinished = report["unfinished"]
    bound = unfinished["all_arrivals_lower_bound"]["all"]
    lines.append(f"unfinished: {unfinished['count']['all']} of {cost['arrivals']} arrivals; "
                 f"latency of all {bound['arrivals']} arrivals after warm-up, unfinished ones "
                 "at their age (a lower bound): " + ", ".join(
                     f"{label} {_fmt(bound[key])} ms" for label, key in (
                         ("mean", "average_latency"), ("p50", "50th_latency"),
                         ("p95", "95th_latency"), ("p99", "99th_latency"))))
    statistics = report.get("statistics", {"percentiles": "exact"})
    if statistics["percentiles"] == "exact":
        lines.append("percentiles: exact")
    else:
        lines.append("percentiles: sketch, relative error <= "
                     f"{100.0 * statistics['relative_error']:g} %")
    return "\n".join(lines)


def format_engine(engine: dict[str, Any]) -> str:
    """Which path ran, in a line: simulated seconds on each and why not fast elsewhere."""
    total = engine["fast_s"] + engine["simpy_s"]
    share = 100.0 * engine["fast_s"] / total if total else 0.0
    line = (f"engine: fast path {engine['fast_s']:,.0f} s of {total:,.0f} simulated s "
            f"({share:.0f} %, {engine['stretches']} stretches, {engine['hand_backs']} "
            f"hand-backs to SimPy), SimPy {engine['simpy_s']:,.0f} s")
    if engine["not_fast_because"]:
        line += "; not fast because: " + "; ".join(engine["not_fast_because"])
    return line


def unfinished_warning(report: dict[str, Any]) -> str:
    """A warning when more than 1 % of arrivals were unfinished at the end, else ""."""
    arrivals = report["cost"]["arrivals"]
    count = report["unfinished"]["count"]["all"]
    if not arrivals or count <= UNFINISHED_WARNING * arrivals:
        return ""
    mean = report["unfinished"]["all_arrivals_lower_bound"]["all"]["average_latency"]
    return (f"{count} of {arrivals} arrivals ({100.0 * count / arrivals:.1f} %) were "
            "unfinished when the run ended and walker_run's latencies leave them out; "
            f"counting each at its age, the mean latency is at least {_fmt(mean)} ms")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _policies(args: argparse.Namespace) -> int:
    listing: dict[str, dict[str, Any]] = {}
    for name in names():
        try:
            cls = resolve(name)
        except PolicyError as exc:  # one broken installed package must not hide the rest
            listing[name] = {"doc": f"(cannot load: {exc})", "package": package_of(name),
                             "params": []}
            continue
        # The docstring's first paragraph, which may wrap over several lines.
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        listing[name] = {"doc": doc, "package": package_of(name), "params": [
            {"name": p.name, "type": p.type, "default": p.default, "doc": p.doc,
             "minimum": p.minimum, "maximum": p.maximum} for p in describe(name)]}
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    for name, info in listing.items():
        source = f" (from package {info['package']})" if info["package"] else ""
        print(f"{name}{source}: {info['doc']}")
        for p in info["params"]:
            bounds = ""
            if p["minimum"] is not None or p["maximum"] is not None:
                low = "" if p["minimum"] is None else p["minimum"]
                high = "" if p["maximum"] is None else p["maximum"]
                bounds = f" [{low}..{high}]"
            print(f"    {p['name']} ({p['type']}) = {p['default']!r}{bounds}  {p['doc']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
