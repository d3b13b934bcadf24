"""The `jsorc` commands of jsorc_live.ops (cli.py registers them):

    jsorc tracksys start | stop | report
    jsorc service refresh NAME | status
    jsorc serve ... --keep-alive prometheus,redis --prometheus-url URL

Client side only: this module imports neither the server nor its services.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "add_commands", "run_command", "serving", "show"]

COMMANDS = ("tracksys", "service")

Post = Callable[[argparse.Namespace, str, dict[str, Any]], dict[str, Any]]


def add_commands(sub: Any, client: argparse.ArgumentParser,
                 serve: argparse.ArgumentParser) -> None:
    """Add `tracksys` and `service` to the `jsorc` subcommands, and --keep-alive and
    --prometheus-url to serve."""
    serve.add_argument("--keep-alive", default=None, metavar="NAMES",
                       help="keep these services alive (comma-separated: prometheus,redis); "
                            "sets the keep_alive config")
    serve.add_argument("--prometheus-url", default=os.environ.get("JSORC_PROMETHEUS_URL"),
                       type=_http_url, metavar="URL",
                       help="a Prometheus running beside jsorc, for tracksys (in a cluster: "
                            "it scrapes cAdvisor); default $JSORC_PROMETHEUS_URL")
    track = sub.add_parser("tracksys", help="CPU, memory and network of the runtime and "
                           "every replica over a window").add_subparsers(dest="verb",
                                                                         required=True)
    for verb, about in (("start", "start sampling"), ("stop", "stop sampling; the report"),
                        ("report", "the window so far: a row per process")):
        track.add_parser(verb, parents=[client], help=about)
    service = sub.add_parser("service", help="keep-alive services (prometheus, redis)"
                             ).add_subparsers(dest="verb", required=True)
    a = service.add_parser("refresh", parents=[client], help="restart a keep-alive service")
    a.add_argument("name", help="prometheus or redis")
    service.add_parser("status", parents=[client], help="every keep-alive service")


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or value.endswith("://"):
        raise argparse.ArgumentTypeError(f"expected an http(s):// URL, got {value!r}")
    return value


def run_command(args: argparse.Namespace, post: Post) -> dict[str, Any]:
    if args.command == "tracksys":
        return post(args, f"/jsorc/tracksys/{args.verb}", {})
    if args.verb == "refresh":
        return post(args, "/jsorc/service/refresh", {"name": args.name})
    return post(args, "/jsorc/service/status", {})


def show(args: argparse.Namespace, answer: dict[str, Any]) -> bool:
    """Print the answer of one of these commands; False when it is not one of them."""
    if args.command not in COMMANDS or args.json:
        return False
    if "report" in answer:
        print(report_table(answer["report"]))
    elif "services" in answer:
        print(services_table(answer["services"]))
    else:
        print(answer.get("message", "ok"))
    return True


def _num(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def report_table(report: dict[str, Any]) -> str:
    window = report["window"]
    rows: list[Sequence[str]] = [("process", "pid", "cpu_s", "cpu_%", "rss_mean_MB",
                                  "rss_max_MB", "http_in_KB", "http_out_KB", "samples")]
    for p in report["processes"]:
        rows.append((p["name"], str(p["pid"] or "-"), _num(p["cpu_seconds"]),
                     _num(p["cpu_percent"], digits=1), _num(p["rss_bytes_mean"], 2**20, 1),
                     _num(p["rss_bytes_max"], 2**20, 1), _num(p["net_received_bytes"], 1024, 1),
                     _num(p["net_sent_bytes"], 1024, 1), str(p["samples"])))
    state = "running" if window["running"] else "stopped"
    return "\n".join([f"source: {report['source']} ({report['detail']})",
                      f"window: {window['seconds']:.1f} s, {state}", *_table(rows)])


def services_table(services: dict[str, Any]) -> str:
    if not services:
        return "no keep-alive services (jsorc config set keep_alive '[\"prometheus\"]')"
    rows: list[Sequence[str]] = [("service", "state", "pid", "url", "restarts", "message")]
    for name, s in services.items():
        rows.append((name, s["state"], str(s.get("pid") or "-"), s.get("url") or "-",
                     str(s.get("restarts", 0)), s.get("message", "")))
    return "\n".join(_table(rows))


def serving(app: Any, args: argparse.Namespace) -> None:
    """`jsorc serve`: tell the app where it serves and apply --keep-alive,
    --prometheus-url and --state-dir (the persistent services' data)."""
    from jsorc_live.children import default_state_dir
    from jsorc_live.ops import serving as ops_serving

    ops_serving(app, args.host, args.port, args.keep_alive, args.prometheus_url,
                args.state_dir or default_state_dir())
