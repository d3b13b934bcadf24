"""The HTTP API fuzzed from its own OpenAPI schema (jsorc_live.fuzz, schemathesis).

A real app (the process backend, at most 2 replicas per action) on 127.0.0.1 gets
schema-generated bodies, valid and invalid, with the admin token and without: no response
>= 500, every response as documented, and no state change from a rejected request. Short
here (a few examples per operation); `JSORC_FUZZ_LONG=1` (make chaos) runs the long version,
the same as `python -m jsorc_live.fuzz --long`.
"""

from __future__ import annotations

import os
import secrets

import pytest

from jsorc_live.fuzz import LONG_EXAMPLES, SHORT_EXAMPLES, fuzz, serving_for_fuzz

pytest.importorskip("schemathesis")


def test_fuzzing_the_schema_finds_no_server_error_and_no_state_change() -> None:
    examples = LONG_EXAMPLES if os.environ.get("JSORC_FUZZ_LONG") == "1" else SHORT_EXAMPLES
    token = secrets.token_hex(16)
    with serving_for_fuzz(token) as url:
        summary = fuzz(url, token, max_examples=examples)
    print(summary.line())
    assert summary.requests > 40 * examples  # every operation was reached, in every mode
    assert summary.rejected > 0
    assert summary.server_errors == 0, summary.failures
    assert summary.state_changes == 0, summary.failures
    assert not summary.failures, "\n".join(summary.failures[:20])
