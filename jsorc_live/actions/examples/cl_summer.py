"""cl_summer: a stand-in for jaseci_ai_kit's classical extractive summariser (152 MB real):
the sentences closest to the text's centroid, in their original order."""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import ModelHolder, TextModel, sentences
from jsorc_live.actions.registry import jsorc_action

_model = ModelHolder(
    "cl_summer", lambda mb, seed: TextModel("cl_summer", mb, dim=128, layers=2, seed=seed)
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 152 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def summarize(text: str, sent_count: int = 3) -> list[str]:
    """The ``sent_count`` most central sentences of ``text``."""
    if sent_count < 1:
        raise ValueError(f"sent_count must be >= 1, got {sent_count}")
    sents = sentences(text)
    if len(sents) <= sent_count:
        return sents
    e = _model.get().embed(sents)
    centrality = e @ e.mean(axis=0)
    keep = np.sort(np.argsort(-centrality, kind="stable")[:sent_count])
    return [sents[i] for i in keep]
