"""use_qa: a stand-in for jaseci_ai_kit's Universal Sentence Encoder QA (2157 MB real).

Questions and answers are embedded by two heads of one encoder; ``qa_score`` compares a
question's and an answer's embedding, ``qa_classify`` picks the best answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import (
    FloatArray,
    ModelHolder,
    TextModel,
    cosine,
    rounded,
    texts_of,
)
from jsorc_live.actions.registry import jsorc_action

_DIM = 512
_model = ModelHolder(
    "use_qa",
    lambda mb, seed: TextModel(
        "use_qa", mb, dim=_DIM, layers=6, heads={"question": _DIM, "answer": _DIM}, seed=seed
    ),
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 2157 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


def _encode(head: str, texts: Sequence[str]) -> FloatArray:
    return _model.get().encode(head, texts)


@jsorc_action
def question_encode(question: str | list[str]) -> list[list[float]]:
    """One unit vector per question."""
    result: list[list[float]] = rounded(_encode("question", texts_of(question)))
    return result


@jsorc_action
def answer_encode(
    answer: str | list[str], context: str | list[str] | None = None
) -> list[list[float]]:
    """One unit vector per answer, with its context (one per answer) if given."""
    answers = texts_of(answer)
    if context is not None:
        contexts = texts_of(context)
        if len(contexts) != len(answers):
            raise ValueError(f"{len(answers)} answers but {len(contexts)} contexts")
        answers = [f"{a} {c}" for a, c in zip(answers, contexts, strict=True)]
    result: list[list[float]] = rounded(_encode("answer", answers))
    return result


@jsorc_action
def qa_score(q_emb: list[float], a_emb: list[float]) -> float:
    """How well an answer embedding answers a question embedding (cosine)."""
    return cosine(q_emb, a_emb)


@jsorc_action
def qa_classify(question: str, answers: list[str]) -> dict[str, Any]:
    """The answer that best answers the question."""
    if not answers:
        raise ValueError("answers must not be empty")
    scores = _encode("answer", answers) @ _encode("question", [question])[0]
    best = int(np.argmax(scores))
    return {"match": answers[best], "match_idx": best, "scores": rounded(scores)}
