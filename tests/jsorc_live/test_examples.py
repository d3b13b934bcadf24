"""The example actions and their configs: every example is found through
``jsorc_live.actions.config``, allocates real memory of the configured size, answers with a
plausible, deterministic, JSON-ready result, does work proportional to its input, and answers
the same locally and from an action server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jsorc_live.actions.client import RemoteActions
from jsorc_live.actions.config import (
    ACTION_CONFIGS,
    DEFAULT_CONFIG_MODULE,
    REAL_MEMORY_MB,
    SCALE_ENV,
    ActionConfig,
    ConfigError,
    action_scale,
    example_configs,
    load_action_config,
    scaled_memory_mb,
)
from jsorc_live.actions.examples import EXAMPLES
from jsorc_live.actions.examples._model import encode_audio
from jsorc_live.actions.examples.stt import VOCABULARY
from jsorc_live.actions.examples.tfm_ner import LABELS
from jsorc_live.actions.loader import LocalModule
from tests.jsorc_live.servers import free_port, running

TEXT = ("Alice Smith flew from Paris to New York on Monday. The weather was fine! "
        "Then she met Bob at the Google office. They talked about money and time.")
SMALL_MB = 8.0


def module_of(name: str) -> str:
    return f"jsorc_live.actions.examples.{name}"


# ----------------------------------------------------------------------------- configs


def test_every_example_has_a_config_that_jsorc_actions_config_finds() -> None:
    assert set(ACTION_CONFIGS) == set(EXAMPLES) == set(REAL_MEMORY_MB)
    for name in EXAMPLES:
        config = load_action_config(DEFAULT_CONFIG_MODULE, name)
        assert config.module == module_of(name)
        assert config.remote_memory_mb > config.local_memory_mb > 0


def test_sizes_default_to_a_fiftieth_of_jaseci_ai_kits_figures() -> None:
    assert action_scale({}) == 1 / 50
    expected = {"use_enc": 79.96, "use_qa": 43.14, "text_seg": 34.12, "sbert_sim": 24.18,
                "tfm_ner": 20.28, "bi_enc": 6.68, "cl_summer": 3.04, "ent_ext": 81.0,
                "vc_tts": 52.0, "stt": 30.0}
    configs = example_configs(1 / 50)
    assert {n: c.local_memory_mb for n, c in configs.items()} == expected
    assert {n: c.setup for n, c in configs.items()} == {n: {"memory_mb": mb}
                                                        for n, mb in expected.items()}
    assert example_configs(1.0)["use_enc"].local_memory_mb == 3998  # up to the real figures


@pytest.mark.parametrize(
    ("value", "scale"), [("", 1 / 50), ("1", 1.0), ("0.001", 0.001), (" 0.5 ", 0.5)]
)
def test_the_scale_comes_from_the_environment(value: str, scale: float) -> None:
    assert action_scale({SCALE_ENV: value}) == scale


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "abc", "nan"])
def test_a_bad_scale_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{SCALE_ENV} must be a number in \(0, 1\]"):
        action_scale({SCALE_ENV: value})


def test_the_scale_variable_sets_the_configs_of_a_process() -> None:
    code = "from jsorc_live.actions.config import ACTION_CONFIGS as C; print(C['use_enc'])"
    env = {**os.environ, SCALE_ENV: "0.001"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "local_memory_mb=3.998" in out and "'memory_mb': 3.998" in out


def test_config_lookups_are_restricted_to_trusted_config_modules() -> None:
    with pytest.raises(ConfigError, match="config module 'os' is not trusted"):
        load_action_config("os", "use_enc")
    with pytest.raises(ConfigError, match=r"no action 'nope' in jsorc_live.actions.config"):
        load_action_config(DEFAULT_CONFIG_MODULE, "nope")


def test_a_config_says_how_to_start_a_replica_on_each_backend() -> None:
    config = ACTION_CONFIGS["bi_enc"]
    assert config.command("127.0.0.1", 8001, python="py") == [
        "py", "-m", "jsorc_live.actions.server", module_of("bi_enc"), "--host", "127.0.0.1",
        "--port", "8001", "--setup", json.dumps(dict(config.setup))]
    k8s = config.kubernetes()
    assert (k8s.port, k8s.cpu, k8s.memory_mb) == (80, 1.0, math.ceil(config.remote_memory_mb))
    assert k8s.command[:4] == ("python", "-m", "jsorc_live.actions.server", module_of("bi_enc"))


def test_a_jaseci_style_config_entry_is_read() -> None:
    config = ActionConfig.from_dict(
        "use_enc", {"module": "jac_nlp.use_enc", "local_mem_requirement": 3998, "remote": {}}
    )
    assert (config.module, config.local_memory_mb) == ("jac_nlp.use_enc", 3998.0)
    with pytest.raises(ConfigError, match="not a module name"):
        ActionConfig("x", "os; rm -rf", 1, 1)


# ---------------------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def loaded() -> Iterator[Callable[[str], LocalModule]]:
    """Each example loaded once, small."""
    cache: dict[str, LocalModule] = {}

    def get(name: str) -> LocalModule:
        if name not in cache:
            cache[name] = LocalModule.load(module_of(name), setup={"memory_mb": SMALL_MB})
        return cache[name]

    yield get
    for local in cache.values():
        local.unload()


def one_second_of_audio() -> str:
    t = np.arange(8000) / 8000
    return encode_audio(0.5 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2)


def unit_vectors(n: int, dim: int) -> Callable[[Any], bool]:
    return lambda r: (len(r) == n and all(len(v) == dim for v in r)
                      and all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in r))


def entities(labels: tuple[str, ...] | list[str]) -> Callable[[Any], bool]:
    return lambda r: len(r) > 0 and all(
        TEXT[e["start_pos"]:e["end_pos"]] == e["entity_text"] and e["entity_value"] in labels
        and 0 < e["conf_score"] <= 1 for e in r)


@dataclass(frozen=True)
class ExampleCall:
    example: str
    action: str
    params: dict[str, Any]
    plausible: Callable[[Any], bool]


SENTENCES = ["Alice Smith flew from Paris to New York on Monday.", "The weather was fine!",
             "Then she met Bob at the Google office.", "They talked about money and time."]

EXAMPLE_CALLS = [
    ExampleCall("use_enc", "encode", {"text": ["a dog", "a cat", "a car"]}, unit_vectors(3, 512)),
    ExampleCall("use_enc", "encode", {"text": "one text"}, unit_vectors(1, 512)),
    ExampleCall("use_enc", "text_similarity", {"text1": "same words", "text2": "same words"},
                lambda r: r == pytest.approx(1.0)),
    ExampleCall("use_enc", "text_classify", {"text": TEXT, "classes": ["travel", "food"]},
                lambda r: r["match"] == ["travel", "food"][r["match_idx"]]
                and len(r["scores"]) == 2),
    ExampleCall("use_qa", "question_encode", {"question": ["where?", "when?"]},
                unit_vectors(2, 512)),
    ExampleCall("use_qa", "qa_classify",
                {"question": "Where did Alice fly?", "answers": ["Paris", "Monday", "Bob"]},
                lambda r: r["match"] in ("Paris", "Monday", "Bob") and len(r["scores"]) == 3),
    ExampleCall("text_seg", "get_segments", {"text": TEXT, "threshold": 0.85},
                lambda r: " ".join(r) == " ".join(SENTENCES)),
    ExampleCall("text_seg", "get_segments", {"text": TEXT, "threshold": -1.0},
                lambda r: r == [" ".join(SENTENCES)]),
    ExampleCall("tfm_ner", "extract_entity", {"text": TEXT}, entities(LABELS)),
    ExampleCall("sbert_sim", "get_text_sim", {"text1": "a b c", "text2": ["a b c", "x y"]},
                lambda r: len(r) == 2 and r[0] == pytest.approx(1.0) and r[1] < 1),
    ExampleCall("bi_enc", "infer", {"contexts": ["book a table", "hi"],
                                    "candidates": ["reserve", "greet"]},
                lambda r: [x["predicted_candidate"] in ("reserve", "greet") for x in r]
                == [True, True]),
    ExampleCall("bi_enc", "cos_sim_score", {"q": "hi", "a": "hello"},
                lambda r: isinstance(r, float) and -1 <= r <= 1),
    ExampleCall("cl_summer", "summarize", {"text": TEXT, "sent_count": 2},
                lambda r: len(r) == 2 and sorted(r, key=SENTENCES.index) == r),
    ExampleCall("ent_ext", "entity_detection", {"text": TEXT, "ner_labels": ["PERSON", "CITY"]},
                entities(["PERSON", "CITY"])),
    ExampleCall("vc_tts", "synthesize", {"text": "hello world"},
                lambda r: (r["samples"], r["duration_s"], r["sample_rate"]) == (4000, 0.5, 8000)
                and len(r["audio"]) == math.ceil(4000 * 2 / 3) * 4),
    ExampleCall("stt", "transcribe", {"audio": one_second_of_audio()},
                lambda r: r["words"] == 5 and r["duration_s"] == 1.0
                and all(w in VOCABULARY for w in r["text"].split())),
]


@pytest.mark.parametrize("call", EXAMPLE_CALLS, ids=lambda c: f"{c.example}.{c.action}")
def test_an_example_answers_plausibly_deterministically_and_in_plain_json(
    loaded: Callable[[str], LocalModule], call: ExampleCall
) -> None:
    local = loaded(call.example)
    result = local.call(call.action, call.params)
    assert call.plausible(result), result
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert local.call(call.action, call.params) == result


def test_every_example_has_a_call_in_the_table() -> None:
    assert {c.example for c in EXAMPLE_CALLS} == set(EXAMPLES)


def test_answers_depend_only_on_the_input_size_and_seed() -> None:
    params = {"text": ["the same input"]}
    a = LocalModule.load(module_of("bi_enc"), setup={"memory_mb": 4, "seed": 1})
    b = LocalModule.load(module_of("bi_enc"), setup={"memory_mb": 4, "seed": 1})
    c = LocalModule.load(module_of("bi_enc"), setup={"memory_mb": 4, "seed": 2})
    try:
        ra, rb, rc = (m.call("get_context_emb", {"contexts": params["text"]}) for m in (a, b, c))
        assert ra == rb
        assert ra != rc
    finally:
        for m in (a, b, c):
            m.unload()


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_takes_the_memory_it_is_given_and_gives_it_back(name: str) -> None:
    local = LocalModule.load(module_of(name), setup={"memory_mb": 24})
    assert local.setup_result["memory_mb"] == pytest.approx(24, abs=0.01)
    assert 0.95 * 24 <= local.memory_mb <= 24 + 6
    assert local.unload() >= 0.9 * 24


@pytest.mark.parametrize("name", ["bi_enc", "cl_summer"])
def test_by_default_an_example_allocates_its_scaled_real_size(name: str) -> None:
    LocalModule.load(module_of(name), setup={"memory_mb": 1}).unload()  # one-time costs
    local = LocalModule.load(module_of(name))
    try:
        assert local.setup_result["memory_mb"] == pytest.approx(scaled_memory_mb(name), rel=0.01)
        assert local.memory_mb == pytest.approx(scaled_memory_mb(name), abs=3)
    finally:
        local.unload()


def fastest_times(*calls: Callable[[], object], rounds: int = 5) -> list[float]:
    """Each call's fastest wall time over ``rounds``, the calls interleaved so that a busy
    machine slows them alike. (Not CPU time: OpenBLAS's threads spin for a while after a
    product, and that CPU time lands on whatever call comes next.)"""
    best = [math.inf] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    ("example", "action", "small", "large"),
    [
        ("use_enc", "encode", {"text": [TEXT] * 2}, {"text": [TEXT] * 32}),
        ("vc_tts", "synthesize", {"text": TEXT[:100]}, {"text": TEXT * 11}),
    ],
)
def test_work_grows_with_the_input(
    loaded: Callable[[str], LocalModule], example: str, action: str,
    small: dict[str, Any], large: dict[str, Any],
) -> None:
    local = loaded(example)
    small_s, large_s = fastest_times(lambda: local.call(action, small),
                                     lambda: local.call(action, large))
    assert large_s / small_s > 4  # the input is 16 times larger


def test_a_replica_started_from_the_config_answers_as_the_local_copy(tmp_path: Path) -> None:
    config = ACTION_CONFIGS["use_enc"]
    local = LocalModule.load(config.module, setup=config.setup)
    port = free_port()
    try:
        with running(config.command("127.0.0.1", port), port, tmp_path / "use_enc.log") as srv, \
                RemoteActions(srv.url, timeout_s=10) as remote:
            assert remote.spec() == local.spec(remote_only=True)
            for action, params in [("encode", {"text": [TEXT, "short"]}),
                                   ("text_classify", {"text": TEXT, "classes": ["a", "b"]})]:
                assert remote.call(f"use_enc.{action}", params) == local.call(action, params)
    finally:
        local.unload()
