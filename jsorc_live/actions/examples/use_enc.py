"""use_enc: a stand-in for jaseci_ai_kit's Universal Sentence Encoder (3998 MB real).

``use_enc.encode(text)`` embeds texts; ``cos_sim_score``, ``text_similarity`` and
``text_classify`` compare them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import ModelHolder, TextModel, cosine, rounded, texts_of
from jsorc_live.actions.registry import jsorc_action

_model = ModelHolder(
    "use_enc", lambda mb, seed: TextModel("use_enc", mb, dim=512, layers=6, seed=seed)
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 3998 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def encode(text: str | list[str]) -> list[list[float]]:
    """One 512-d unit vector per text."""
    result: list[list[float]] = rounded(_model.get().embed(texts_of(text)))
    return result


@jsorc_action
def cos_sim_score(q_emb: list[float], a_emb: list[float]) -> float:
    """Cosine similarity of two vectors."""
    return cosine(q_emb, a_emb)


@jsorc_action
def text_similarity(text1: str, text2: str) -> float:
    """Cosine similarity of two texts' embeddings."""
    e = _model.get().embed([text1, text2])
    return cosine(e[0], e[1])


@jsorc_action
def text_classify(text: str, classes: list[str]) -> dict[str, Any]:
    """The class whose embedding is closest to the text's."""
    if not classes:
        raise ValueError("classes must not be empty")
    e = _model.get().embed([text, *classes])
    scores = e[1:] @ e[0]
    best = int(np.argmax(scores))
    return {"match": classes[best], "match_idx": best, "scores": rounded(scores)}
