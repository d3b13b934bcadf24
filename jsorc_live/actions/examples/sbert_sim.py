"""sbert_sim: a stand-in for jaseci_ai_kit's Sentence-BERT similarity (1209 MB real)."""

from __future__ import annotations

from typing import Any

from jsorc_live.actions.examples._model import ModelHolder, TextModel, cosine, rounded, texts_of
from jsorc_live.actions.registry import jsorc_action

_model = ModelHolder(
    "sbert_sim", lambda mb, seed: TextModel("sbert_sim", mb, dim=384, layers=4, seed=seed)
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 1209 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def getembeddings(text: str | list[str]) -> list[list[float]]:
    """One 384-d unit vector per text."""
    result: list[list[float]] = rounded(_model.get().embed(texts_of(text)))
    return result


@jsorc_action
def get_text_sim(text1: str, text2: str | list[str]) -> list[float]:
    """Similarity of ``text1`` to each text of ``text2``."""
    others = texts_of(text2)
    e = _model.get().embed([text1, *others])
    result: list[float] = rounded(e[1:] @ e[0])
    return result


@jsorc_action
def get_cos_score(vec_a: list[float], vec_b: list[float]) -> float:
    """Cosine similarity of two vectors."""
    return cosine(vec_a, vec_b)
