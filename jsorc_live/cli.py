"""`jsorc`: serve the live runtime, and JSORC's admin commands against a running server.

    jsorc serve [--host 127.0.0.1] [--port 8000] [--backend process|kube] [--config MODULE]
                [--kubeconfig FILE] [--context NAME] [--in-cluster] [--namespace NS]
                [--keep-on-shutdown] [--walker-threads N] [--walker-queue N]
                [--admin-threads N] [--max-body-mb MB] [--max-replicas N]
                [--state-dir DIR] [--database URL] [--shutdown-timeout S] [--viewer-token T]
    jsorc actions config NAME CONFIG
    jsorc actions load NAME -mode module|remote [--url URL] [--replicas N]
    jsorc actions status NAME
    jsorc actions unload NAME -mode auto|module|remote
    jsorc actionpolicy set NAME|module:Class|file.py:Class [k=v ...] | get
    jsorc trackact start | stop [--out FILE.parquet|.csv]
    jsorc benchmark start | stop | report
    jsorc config get [NAME] | set NAME VALUE
    jsorc walker run NAME [--ctx JSON]
    jsorc status
    jsorc loadtest --app NAME [--clients N] [--duration S] [--grace S] [--trace FILE] [--out DIR]
    jsorc tracksys start | stop | report
    jsorc service refresh NAME | status
    jsorc devcluster --kubeconfig FILE [--port P] [--namespace NS] [--log-dir DIR]
    jsorc --version

Every client command takes `--server URL` (or JSORC_URL, default http://127.0.0.1:8000),
`--token T` (or JSORC_TOKEN) and `--json`. A refusal prints one line and exits with 2.
`jsorc serve` with JSORC_ADMIN_EMAIL and JSORC_ADMIN_PASSWORD set also lets Jaseci's
`jsctl login` in (jsorc_live.jaseci_api).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx

from jsorc_live import loadtest, ops_cli

DEFAULT_SERVER = "http://127.0.0.1:8000"


class Refused(Exception):
    """A command the server (or the CLI) refused: one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "serve":
            args.given = given_flags(argv, STATE_FLAGS)
            return serve(args)
        if args.command == "loadtest":
            return loadtest.run(args, post)
        if args.command == "devcluster":
            return devcluster(args)
        answer = run_command(args)
    except (Refused, loadtest.LoadtestError) as exc:
        print(f"jsorc: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_gone()
    try:
        show(args, answer)
    except BrokenPipeError:
        return _reader_gone()
    return 0


def _reader_gone() -> int:
    """The reader of our output left (`jsorc ... --json | head`): no traceback; stdout goes
    to /dev/null so the interpreter's last flush cannot raise again (Python's advice)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a shell reports a reader gone


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--server", default=os.environ.get("JSORC_URL", DEFAULT_SERVER),
                        help="the jsorc server (default $JSORC_URL or %(default)s)")
    client.add_argument("--token", default=os.environ.get("JSORC_TOKEN"),
                        help="admin token (default $JSORC_TOKEN)")
    client.add_argument("--json", action="store_true", help="print the answer as JSON")
    client.add_argument("--timeout", type=_seconds, default=120.0,
                        help="seconds to wait for an answer (default %(default)s)")

    parser = argparse.ArgumentParser(prog="jsorc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=Version, help="print jsorc's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the runtime and the JSORC API")
    serve_p.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default %(default)s)")
    serve_p.add_argument("--port", type=_port, default=8000,
                         help="port to listen on (default %(default)s)")
    serve_p.add_argument("--backend", choices=["process", "kube"], default="process",
                         help="where remote replicas run: action-server processes here, "
                              "or Deployments in a Kubernetes namespace")
    kube = serve_p.add_argument_group("kube backend")
    kube.add_argument("--kubeconfig", default=None,
                      help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    kube.add_argument("--context", default=None, help="kubeconfig context (default: current)")
    kube.add_argument("--in-cluster", action="store_true",
                      help="use the pod's service account instead of a kubeconfig")
    kube.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or "default",
                      help="namespace to manage (default $POD_NAMESPACE or default)")
    kube.add_argument("--keep-on-shutdown", action="store_true",
                      help="leave the Deployments running at exit for the next jsorc to adopt")
    serve_p.add_argument("--token", default=os.environ.get("JSORC_TOKEN"),
                         help="admin token (default $JSORC_TOKEN; required)")
    serve_p.add_argument("--viewer-token", default=os.environ.get("JSORC_VIEWER_TOKEN"),
                         help="a read-only token that opens /dashboard and nothing else "
                              "(default $JSORC_VIEWER_TOKEN; the admin token opens it too)")
    serve_p.add_argument("--config", default=None,
                         help="configure every action of this config module at start")
    serve_p.add_argument("--policy", default="default", help="initial action policy")
    serve_p.add_argument("--allow-policy-module", action="append", default=[], metavar="MOD",
                         help="a module `actionpolicy set MOD:Class` may import: a name "
                              "(pkg.mod) or every module below a package (pkg.*); repeatable. "
                              "None by default: only registered policies")
    serve_p.add_argument("--policy-file", action="append", default=[], metavar="FILE.py",
                         help="import this file at start-up as module FILE (its policies "
                              "can then be set as FILE:Class, path/to/FILE.py:Class, or by a "
                              "name it registers); repeatable")
    serve_p.add_argument("--log-level", default="warning", type=str.lower,
                         choices=("debug", "info", "warning", "error"),
                         help="debug, info, warning or error (default %(default)s)")
    limits = serve_p.add_argument_group("limits")
    limits.add_argument("--walker-threads", type=_count, default=64, metavar="N",
                        help="threads for walker runs (default %(default)s)")
    limits.add_argument("--walker-queue", type=_count0, default=256, metavar="N",
                        help="walker runs that may wait for a thread; more are answered 503 "
                             "with Retry-After (default %(default)s)")
    limits.add_argument("--admin-threads", type=_count, default=16, metavar="N",
                        help="threads for the admin API, never taken by walker runs "
                             "(default %(default)s)")
    limits.add_argument("--max-body-mb", type=_megabytes, default=8.0, metavar="MB",
                        help="largest request body in MiB; larger ones are answered 413 "
                             "(default %(default)g)")
    limits.add_argument("--max-replicas", type=_count, default=32, metavar="N",
                        help="most replicas of any one action (default %(default)s; "
                             "`config set max_replicas` changes it)")
    serve_p.add_argument("--state-dir", default=None, metavar="DIR",
                         help="where the list of this server's child processes is kept, so "
                              "the next server on this address stops what a killed one left, "
                              "and its state (HOST-PORT.state.json) when no database keeps it "
                              "(default $XDG_STATE_HOME/jsorc or ~/.local/state/jsorc)")
    serve_p.add_argument("--database", default=os.environ.get("JSORC_DATABASE_URL") or None,
                         metavar="URL",
                         help="keep the state (action configs, policy, settings, trackact) "
                              "in this PostgreSQL, postgresql://user@host:port/db (default "
                              "$JSORC_DATABASE_URL; else a kept-alive PostgreSQL; else a file "
                              "in --state-dir)")
    serve_p.add_argument("--shutdown-timeout", type=_seconds, default=10.0, metavar="S",
                         help="on SIGTERM, requests in flight get S seconds, and closing "
                              "(replicas, services) S more; a second SIGTERM forces "
                              "(default %(default)s)")

    actions = sub.add_parser("actions", help="configure, load, unload actions").add_subparsers(
        dest="verb", required=True)
    a = actions.add_parser("config", parents=[client], help="configure an action")
    a.add_argument("name", help="the action, e.g. use_enc")
    a.add_argument("config", help="module with ACTION_CONFIGS, e.g. jsorc_live.actions.config")
    a = actions.add_parser("load", parents=[client], help="load an action locally or remote")
    a.add_argument("name", help="a configured action")
    a.add_argument("-mode", "--mode", required=True, choices=["module", "local", "remote"])
    a.add_argument("--url", default=None, help="attach this running action server")
    a.add_argument("--replicas", type=int, default=None,
                   help="remote replicas (default 1; on a remote action: scale to N)")
    a = actions.add_parser("status", parents=[client], help="an action's status")
    a.add_argument("name", help="a configured action")
    a = actions.add_parser("unload", parents=[client], help="unload an action")
    a.add_argument("name", help="a loaded action")
    a.add_argument("-mode", "--mode", default="auto", choices=["auto", "module", "local",
                                                               "remote"])

    policy = sub.add_parser("actionpolicy", help="the action placement policy").add_subparsers(
        dest="verb", required=True)
    a = policy.add_parser("set", parents=[client], help="set the policy")
    a.add_argument("name", help="a registered policy, module:Class or path/to/file.py:Class "
                                "(modules and files the server allows)")
    a.add_argument("params", nargs="*", metavar="k=v",
                   help="policy parameters (a JSON object or list is parsed)")
    policy.add_parser("get", parents=[client], help="the policy and its parameters")

    for group, about, verbs in (
            ("trackact", "track action calls (JSORC's call trace)",
             (("start", "start tracking action calls"),
              ("stop", "stop tracking; the calls since start"))),
            ("benchmark", "JSORC's walker benchmark (latency, throughput)",
             (("start", "start the benchmark"), ("stop", "stop it; its report"),
              ("report", "the report so far")))):
        g = sub.add_parser(group, help=about).add_subparsers(dest="verb", required=True)
        for verb, verb_help in verbs:
            a = g.add_parser(verb, parents=[client], help=verb_help)
            if group == "trackact" and verb == "stop":
                a.add_argument("--out", default=None, help="write the calls to .parquet/.csv")

    config = sub.add_parser("config", help="the JSORC config").add_subparsers(
        dest="verb", required=True)
    a = config.add_parser("get", parents=[client], help="every setting, or one")
    a.add_argument("name", nargs="?", help="one setting (default: all)")
    a = config.add_parser("set", parents=[client], help="change one setting")
    a.add_argument("name", help="automation, backoff_interval, namespace, keep_alive, "
                                "kubernetes or max_replicas")
    a.add_argument("value", help="a JSON value, or text the setting reads (2.5, true)")

    walker = sub.add_parser("walker", help="run walkers").add_subparsers(dest="verb",
                                                                        required=True)
    a = walker.add_parser("run", parents=[client], help="run a walker once, print its report")
    a.add_argument("name", help="the walker, e.g. restaurant_chatbot")
    a.add_argument("--ctx", default="{}", help="the walker's ctx as a JSON object")

    sub.add_parser("status", parents=[client], help="every action at a glance")
    loadtest.add_parser(sub, client)
    ops_cli.add_commands(sub, client, serve_p)  # tracksys, service, serve --keep-alive

    dev = sub.add_parser(
        "devcluster", help="a Kubernetes dev cluster on this machine, for the kube backend",
        description="Run a Kubernetes API emulator on 127.0.0.1 and a stand-in kubelet that "
                    "runs each Deployment's pods as real processes, each on its own loopback "
                    "address (127.0.X.N). Writes a kubeconfig for kubectl and the Python "
                    "client; runs until SIGINT/SIGTERM, then stops every pod it started. "
                    "Needs the devcluster extra: pip install -e '.[devcluster]'.")
    dev.add_argument("--kubeconfig", required=True, type=Path,
                     help="where to write the kubeconfig (context jsorc-dev)")
    dev.add_argument("--port", type=int, default=0,
                     help="API port on 127.0.0.1 (default 0: a free one, printed)")
    dev.add_argument("--namespace", default="jsorc",
                     help="namespace created at start, besides default (default jsorc)")
    dev.add_argument("--log-dir", type=Path, default=None,
                     help="keep pod logs here (default: a temporary folder, removed at exit)")
    dev.add_argument("--log-level", default="warning",
                     help="debug, info, warning or error (default %(default)s)")
    return parser


class Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked."""

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


# --------------------------------------------------------------------------- client side


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    command, verb = args.command, getattr(args, "verb", None)
    if command in ops_cli.COMMANDS:
        return ops_cli.run_command(args, post)
    if command == "actions":
        body: dict[str, Any] = {"name": args.name}
        if verb == "config":
            body["config"] = args.config
        elif verb == "load":
            body["mode"] = args.mode
            if args.replicas is not None:
                body["replicas"] = args.replicas
            if args.url:
                body["url"] = args.url
        elif verb == "unload":
            body["mode"] = args.mode
        return post(args, f"/jsorc/actions/{verb}", body)
    if command == "actionpolicy":
        if verb == "get":
            return post(args, "/jsorc/actionpolicy/get", {})
        from policies.sources import absolute_ref  # only here: client start-up stays light

        # A policy file's path is from this folder; the server checks it against the
        # --policy-file paths it was started with.
        return post(args, "/jsorc/actionpolicy/set",
                    {"policy_name": absolute_ref(args.name),
                     "policy_params": parse_params(args.params)})
    if command == "trackact":
        if verb == "stop" and args.out:
            check_calls_out(Path(args.out))  # before the stop, which ends the session
        answer = post(args, f"/jsorc/trackact/{verb}", {})
        if verb == "stop" and answer.get("lost"):
            print(f"jsorc trackact: warning: the server's call log (its newest 1 M rows) "
                  f"dropped the session's first {answer['lost']} calls", file=sys.stderr)
        if verb == "stop" and args.out:
            write_calls(answer.get("calls", []), Path(args.out))
            answer["written"] = args.out
        return answer
    if command == "benchmark":
        return post(args, f"/jsorc/benchmark/{verb}", {})
    if command == "config":
        if verb == "get":
            return post(args, "/jsorc/config/get", {"name": args.name} if args.name else {})
        return post(args, "/jsorc/config/set", {"name": args.name, "value": args.value})
    if command == "walker":
        try:
            ctx = strict_json(args.ctx)
        except ValueError as exc:
            raise Refused(f"--ctx is not JSON: {exc}") from None
        return post(args, "/walker_run", {"name": args.name, "ctx": ctx}, admin=False)
    return post(args, "/jsorc/status", {})


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """k=v pairs; a value that reads as a JSON object or list is parsed, the rest stay
    strings (the policy registry converts them to each parameter's type)."""
    params: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise Refused(f"policy parameters are k=v, got {item!r}")
        if value[:1] in "{[":
            try:
                params[key] = strict_json(value)
                continue
            except ValueError as exc:
                raise Refused(f"parameter {key}: not JSON: {exc}") from None
        params[key] = value
    return params


def post(args: argparse.Namespace, path: str, body: dict[str, Any],
         admin: bool = True) -> dict[str, Any]:
    headers = {}
    if admin:
        if not args.token:
            raise Refused("no admin token: pass --token or set JSORC_TOKEN")
        headers["Authorization"] = f"token {args.token}"
    url = args.server.rstrip("/") + path
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise Refused(f"cannot reach {args.server}: {type(exc).__name__}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        raise Refused(f"{path}: HTTP {response.status_code}: "
                      f"{response.text.strip()[:200]}") from None
    if not isinstance(answer, dict):
        raise Refused(f"{path}: unexpected answer {answer!r:.200}")
    if response.status_code >= 400 or answer.get("success") is False:
        message = answer.get("message") or answer.get("detail") or response.reason_phrase
        raise Refused(f"{path} refused (HTTP {response.status_code}): {message}")
    return answer


def strict_json(text: str) -> Any:
    """JSON as the server reads it: NaN, Infinity and numbers past a float's range are
    refused here, with the value, rather than failing to send."""
    def refuse(word: str) -> Any:
        raise ValueError(f"{word} is not a JSON number")

    def number(word: str) -> float:
        value = float(word)
        if not math.isfinite(value):
            raise ValueError(f"{word} is out of a float's range")
        return value

    return json.loads(text, parse_constant=refuse, parse_float=number)


def check_calls_out(out: Path) -> None:
    """Refuse a call-table path before anything is asked of the server: the suffix, the
    folder, and a file already there (a user's file is never overwritten)."""
    if out.suffix not in (".parquet", ".csv"):
        raise Refused(f"--out must end in .parquet or .csv, got {out.name!r}")
    if out.exists():
        raise Refused(f"--out {out} exists: give a new file (it is not overwritten)")
    if not out.parent.is_dir():
        raise Refused(f"--out {out}: no folder {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise Refused(f"--out {out}: the folder {out.parent} is not writable")


def write_calls(calls: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    from jsorc_live.runtime import CALL_COLUMNS

    frame = pd.DataFrame(calls, columns=list(CALL_COLUMNS))
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise Refused(f"--out must end in .parquet or .csv, got {out.name!r}")


def show(args: argparse.Namespace, answer: dict[str, Any]) -> None:
    if ops_cli.show(args, answer):
        return
    if args.json:
        print(json.dumps(answer, indent=2))
        return
    command, verb = args.command, getattr(args, "verb", None)
    if command == "status":
        print(status_table(answer))
    elif command == "actions":
        print(action_line(answer["action_status"]))
    elif command == "actionpolicy":
        params = " ".join(f"{k}={v}" for k, v in answer.get("params", {}).items())
        print(f"policy {answer['policy']} {params}".rstrip())
    elif command == "trackact" and verb == "stop":
        where = f", written to {answer['written']}" if answer.get("written") else ""
        print(f"{len(answer.get('calls', []))} calls tracked{where}")
    elif "report" in answer:
        print(json.dumps(answer["report"], indent=2))
    elif command == "config":
        print(json.dumps(answer.get("config", {answer.get("name"): answer.get("value")}),
                         indent=2))
    else:
        print(answer.get("message", "ok"))


def action_line(status: dict[str, Any]) -> str:
    remote = status.get("remote") or {}
    where = f" {remote.get('status')} {remote.get('url') or ''}".rstrip() if remote else ""
    moving = " (moving)" if status.get("transition") else ""
    error = f" error: {status['error']}" if status.get("error") else ""
    return (f"{status['name']}: mode {status['mode']}, calls go to {status['placement']}"
            f"{moving}{where}{error}")


def status_table(answer: dict[str, Any]) -> str:
    header = ("action", "mode", "placement", "desired", "remote", "replicas", "in_flight")
    rows = [header]
    for name, st in answer.get("actions", {}).items():
        remote = st.get("remote") or {}
        rows.append((name, st["mode"], st["placement"], st["desired"],
                     remote.get("status", "-"), str(len(remote.get("replicas", []))),
                     str(st["in_flight"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    config = answer.get("config", {})
    lines.append(f"policy {answer.get('policy')}, automation {config.get('automation')}, "
                 f"backoff_interval {config.get('backoff_interval')} s")
    state = answer.get("state") or {}
    if state.get("store"):
        saved = state.get("last_saved") or "not yet"
        problems = len(state.get("problems") or [])
        lines.append(f"state kept in {state.get('where')}, last saved {saved}"
                     + (f", {problems} problem(s) (see --json)" if problems else "")
                     + (f", error: {state['last_error']}" if state.get("last_error") else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- server side


def _count(value: str, least: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise argparse.ArgumentTypeError(f"must be an int >= {least}, got {value!r}")
    return number


def _port(value: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 0 to 65535, got {value!r}")
    return number


def _count0(value: str) -> int:
    return _count(value, 0)


def _megabytes(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number * 1024 * 1024 < 1:
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {value!r}")
    return number


def _seconds(value: str) -> float:
    from jsorc_live.shutdown import seconds

    return seconds(value)


def serve(args: argparse.Namespace) -> int:
    import logging

    from jsorc_live import shutdown
    from jsorc_live.api import build_service
    from jsorc_live.children import CHILDREN, StateFileBusy, default_state_dir, state_path
    from jsorc_live.kube import KubeError, KubeSettings
    from jsorc_live.limits import PoolSizes
    from jsorc_live.store import StoreError

    if not args.token:
        fail("serve needs an admin token: pass --token or set JSORC_TOKEN")
    kube_flags = (args.kubeconfig, args.context, args.in_cluster, args.keep_on_shutdown)
    if args.backend != "kube" and any(kube_flags):
        fail("--kubeconfig, --context, --in-cluster and --keep-on-shutdown need --backend kube")
    if args.in_cluster and args.kubeconfig:
        fail("give --in-cluster or --kubeconfig, not both")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kube = KubeSettings(in_cluster=args.in_cluster, config=args.kubeconfig,
                        context=args.context, keep_on_shutdown=args.keep_on_shutdown)
    # Before anything starts: stop what a killed server on this address left running.
    try:
        CHILDREN.use_state_file(state_path(args.state_dir or default_state_dir(), args.host,
                                           args.port))
    except (StateFileBusy, OSError) as exc:
        fail(f"cannot start: {exc}")
    try:
        service, app = build_service(args.token, backend=args.backend, config=args.config,
                                     policy=args.policy, kube=kube, namespace=args.namespace,
                                     allowed_policy_modules=tuple(args.allow_policy_module),
                                     policy_files=tuple(args.policy_file),
                                     pools=PoolSizes(args.walker_threads, args.walker_queue,
                                                     args.admin_threads),
                                     max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                                     max_replicas=args.max_replicas,
                                     viewer_token=args.viewer_token or None)
        ops_cli.serving(app, args)  # the URL Prometheus scrapes; --keep-alive
        keep_state(service, app, args)
    except (KubeError, ValueError, StoreError) as exc:  # a bad kubeconfig, cluster or namespace
        CHILDREN.release_state_file()
        fail(f"cannot start: {exc}")
    except Exception as exc:
        CHILDREN.release_state_file()
        fail(f"cannot start: {type(exc).__name__}: {exc}")
    print(f"jsorc serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)

    def close() -> None:
        try:
            service.close()
        finally:
            CHILDREN.release_state_file()

    shutdown.serve(app, host=args.host, port=args.port, log_level=args.log_level, close=close,
                   grace_s=args.shutdown_timeout, close_s=args.shutdown_timeout)
    return 0


# `jsorc serve` flags that choose a setting (or the policy) the state store may also keep.
STATE_FLAGS = {"policy": "policy", "max_replicas": "max_replicas", "keep_alive": "keep_alive"}


def given_flags(argv: Sequence[str] | None, dests: Mapping[str, str]) -> frozenset[str]:
    """The names (`dests`' values) of the serve flags given on this command line, not left
    at their default: the same parse with those defaults suppressed (abbreviations and
    `--flag=value` count as given, as argparse reads them)."""
    parser = build_parser()
    for action in parser._actions:  # the subcommands' parsers
        if isinstance(action, argparse._SubParsersAction):
            for sub_action in action.choices["serve"]._actions:
                if sub_action.dest in dests:
                    sub_action.default = argparse.SUPPRESS
    parsed = vars(parser.parse_args(list(argv) if argv is not None else None))
    return frozenset(name for dest, name in dests.items() if dest in parsed)


def keep_state(service: Any, app: Any, args: argparse.Namespace) -> None:
    """The store that keeps `service`'s state across restarts (jsorc_live.store): restored
    at the app's start, before it serves, and saved after each change."""
    from jsorc_live.children import default_state_dir
    from jsorc_live.service_kinds import ALIASES
    from jsorc_live.store import StateKeeper, serve_store, state_file

    def keeps_database() -> bool:
        return any(ALIASES.get(name, name) == "postgresql"
                   for name in service.settings.keep_alive)

    def kept_url() -> str | None:  # None while the kept-alive PostgreSQL starts
        url = app.state.jsorc_ops.database_url()
        return url if isinstance(url, str) else None

    path = state_file(args.state_dir or default_state_dir(), args.host, args.port)
    # A flag given now wins over the saved state unless the API changed that value before
    # the restart (jsorc_live.store: StartValues); the keeper reads the values now.
    service.state = StateKeeper.for_service(service, serve_store(
        args.database, path, keeps_database=keeps_database, kept_url=kept_url),
        explicit=getattr(args, "given", frozenset()))


def devcluster(args: argparse.Namespace) -> int:
    try:
        from jsorc_live.devcluster.cli import run
    except ModuleNotFoundError as exc:
        if exc.name in ("kmock", "aiohttp", "yaml"):
            fail(f"devcluster needs {exc.name}: pip install -e '.[devcluster]'")
        raise
    return run(args)


def fail(message: str) -> NoReturn:
    print(f"jsorc: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    raise SystemExit(main())
