"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): `python -m jsorc_live.fuzz`.

Serves a real app (`build_service` with the process backend and at most 2 replicas per
action) with uvicorn on 127.0.0.1, loads its /openapi.json, and sends every operation
schemathesis-generated bodies, both valid ones and ones that break the schema, with the
admin token and without it. Every response is checked:

- no status >= 500 (`not_a_server_error`);
- it conforms to the schema: a documented status, content type, headers and body;
- a rejected request (4xx) changed nothing: the server's state (status, policy, settings,
  pending META_CONFIG, controller restarts; not the volatile counters) is the same after it
  as before.

It prints `fuzz: N requests, S responses >= 500, K rejected, C state changes from rejected
requests` and exits 1 on any failure. `--long` (for `make chaos`) sends many more examples;
`--url URL --token T` fuzzes a running server instead. Needs the dev extra (schemathesis).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["FuzzSummary", "fuzz", "main", "serving_for_fuzz"]

SHORT_EXAMPLES = 8
LONG_EXAMPLES = 100


@dataclass
class FuzzSummary:
    requests: int = 0
    server_errors: int = 0
    rejected: int = 0
    state_changes: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.server_errors and not self.state_changes

    def line(self) -> str:
        return (f"fuzz: {self.requests} requests, {self.server_errors} responses >= 500, "
                f"{self.rejected} rejected, {self.state_changes} state changes from rejected "
                f"requests, {len(self.failures)} schema failures")


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def serving_for_fuzz(token: str) -> Iterator[str]:
    """A real `jsorc serve`-like app on a free loopback port until the block ends; its URL.
    Replicas are capped at 2, so a fuzzed load cannot start many processes."""
    from jsorc_live.api import build_service
    from jsorc_live.inproc import app_in_thread
    from jsorc_live.jaseci_login import AdminCredentials

    # Login on, so that /user/token/ is fuzzed past its 503 "login is off".
    service, app = build_service(token, max_replicas=2,
                                 credentials=AdminCredentials("fuzz@example.com", token))
    try:
        with app_in_thread(app) as url:
            yield url
    finally:
        service.close()


# --------------------------------------------------------------------------- state


def snapshot(client: httpx.Client, url: str, token: str) -> dict[str, Any]:
    """What a rejected request must not change. Left out as volatile: calls in flight,
    where calls go now (a move still settling), decisions, timings."""
    headers = {"Authorization": f"token {token}"}

    def post(path: str, body: dict[str, Any]) -> Any:
        return client.post(url + path, json=body, headers=headers, timeout=60).json()

    status = post("/jsorc/status", {})
    policy = post("/jsorc/actionpolicy/get", {})
    meta = post("/js_admin/service_info", {"name": "meta"})
    return {"config": post("/jsorc/config/get", {}).get("config"),
            "status_config": status.get("config"), "walkers": status.get("walkers"),
            "policy": status.get("policy"),
            "actions": {name: st.get("desired")
                        for name, st in (status.get("actions") or {}).items()},
            "params": (policy.get("policy"), policy.get("params")),
            "pending": meta.get("pending"),
            "controller": (meta.get("controller") or {}).get("starts")}


# --------------------------------------------------------------------------- the run


def fuzz(url: str, token: str, *, max_examples: int = SHORT_EXAMPLES, seed: int = 1,
         log: Any = None) -> FuzzSummary:
    """Fuzz the server at `url` (see the module's doc); the summary."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    summary = FuzzSummary()
    auth = {"Authorization": f"token {token}"}
    client = httpx.Client()
    runs = [(GenerationMode.POSITIVE, auth, max_examples),
            (GenerationMode.NEGATIVE, auth, max_examples),
            (GenerationMode.POSITIVE, None, max(2, max_examples // 4))]
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            summary.failures.append(f"the schema is invalid: {result.err()}")
            continue
        operation = result.ok()
        for mode, headers, examples in runs:
            test = given(case=operation.as_strategy(generation_mode=mode))(
                _one(client, url, token, operation.label, headers, checks, summary))
            test = hypothesis.settings(
                max_examples=examples, deadline=None, database=None, derandomize=True,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                print_blob=False)(test)
            # Unsatisfiable: nothing breaks this schema (no body: GET /metrics, /healthz).
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                hypothesis.seed(seed)(test)()
        if log is not None:
            print(f"  {operation.label}: {summary.requests} requests so far", file=log,
                  flush=True)
    client.close()
    return summary


def _one(client: httpx.Client, url: str, token: str, label: str,
         headers: dict[str, str] | None, checks: list[Any], summary: FuzzSummary
         ) -> Callable[[Any], None]:
    """The test of one generated case: send it, check the answer and the state."""
    def one(case: Any) -> None:
        before = snapshot(client, url, token)
        response = case.call(base_url=url, headers=headers, timeout=120)
        summary.requests += 1
        status = response.status_code
        if status >= 500:
            summary.server_errors += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            summary.failures.append(f"{label} {status}: " + " | ".join(lines[:8]))
        if 400 <= status < 500:
            summary.rejected += 1
            after = snapshot(client, url, token)
            if after != before:
                summary.state_changes += 1
                summary.failures.append(
                    f"{label} {status} changed the state: "
                    f"{_diff(before, after)}; body {case.body!r:.200}")

    return one


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = [k for k in before if before[k] != after.get(k)]
    return "; ".join(f"{k}: {json.dumps(before[k])[:80]} -> {json.dumps(after.get(k))[:80]}"
                     for k in keys)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsorc_live.fuzz",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--long", action="store_true",
                        help=f"{LONG_EXAMPLES} examples per operation and mode "
                             f"(default {SHORT_EXAMPLES})")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=None, help="fuzz this running server instead")
    parser.add_argument("--token", default=os.environ.get("JSORC_TOKEN"),
                        help="its admin token (with --url)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    examples = args.max_examples or (LONG_EXAMPLES if args.long else SHORT_EXAMPLES)
    log = sys.stderr if args.verbose else None
    if args.url:
        if not args.token:
            parser.error("--url needs --token (or JSORC_TOKEN)")
        summary = fuzz(args.url, args.token, max_examples=examples, seed=args.seed, log=log)
    else:
        token = secrets.token_hex(16)
        with serving_for_fuzz(token) as url:
            summary = fuzz(url, token, max_examples=examples, seed=args.seed, log=log)
    for failure in summary.failures[:50]:
        print(f"  {failure}", file=sys.stderr)
    print(summary.line(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
