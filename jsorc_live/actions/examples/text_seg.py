"""text_seg: a stand-in for jaseci_ai_kit's transformer text segmentation (1706 MB real).

``get_segments(text, threshold)`` starts a new segment wherever two neighbouring sentences are
less similar than ``threshold``.
"""

from __future__ import annotations

from typing import Any

from jsorc_live.actions.examples._model import ModelHolder, TextModel, sentences
from jsorc_live.actions.registry import jsorc_action

_model = ModelHolder(
    "text_seg", lambda mb, seed: TextModel("text_seg", mb, dim=384, layers=4, seed=seed)
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 1706 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def get_segments(text: str, threshold: float = 0.85) -> list[str]:
    """The text cut into runs of similar sentences (cosine similarity of neighbours at least
    ``threshold``; -1 never cuts, 1 cuts between any two different sentences)."""
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    sents = sentences(text)
    if len(sents) < 2:
        return sents
    e = _model.get().embed(sents)
    segments = [[sents[0]]]
    for i in range(1, len(sents)):
        if float(e[i] @ e[i - 1]) < threshold:
            segments.append([])
        segments[-1].append(sents[i])
    return [" ".join(s) for s in segments]
