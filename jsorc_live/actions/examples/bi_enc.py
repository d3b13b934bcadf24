"""bi_enc: a stand-in for jaseci_ai_kit's bi-encoder (334 MB real): contexts and candidates
are embedded by two heads and scored by their dot product."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import (
    FloatArray,
    ModelHolder,
    TextModel,
    dense,
    rounded,
)
from jsorc_live.actions.registry import jsorc_action

_DIM = 256
_model = ModelHolder(
    "bi_enc",
    lambda mb, seed: TextModel(
        "bi_enc", mb, dim=_DIM, layers=3, heads={"context": _DIM, "candidate": _DIM}, seed=seed
    ),
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 334 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


def _encode(head: str, texts: Sequence[str]) -> FloatArray:
    return _model.get().encode(head, texts)


@jsorc_action
def cos_sim_score(q: str, a: str) -> float:
    """How well candidate ``a`` fits context ``q``, in [-1, 1]."""
    return round(float(_encode("candidate", [a])[0] @ _encode("context", [q])[0]), 6)


@jsorc_action
def get_context_emb(contexts: list[str]) -> list[list[float]]:
    result: list[list[float]] = rounded(_encode("context", contexts))
    return result


@jsorc_action
def get_candidate_emb(candidates: list[str]) -> list[list[float]]:
    result: list[list[float]] = rounded(_encode("candidate", candidates))
    return result


@jsorc_action
def infer(contexts: list[str], candidates: list[str]) -> list[dict[str, Any]]:
    """For each context, the best candidate and every candidate's score."""
    if not candidates:
        raise ValueError("candidates must not be empty")
    scores = dense(_encode("context", contexts), _encode("candidate", candidates).T)
    out = []
    for context, row in zip(contexts, scores, strict=True):
        best = int(np.argmax(row))
        out.append({
            "context": context,
            "predicted_candidate": candidates[best],
            "score": round(float(row[best]), 6),
            "scores": rounded(row),
        })
    return out
