"""ent_ext: a stand-in for jaseci_ai_kit's Flair entity extraction (4050 MB real):
zero-shot, each token is compared with the embeddings of the label names."""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import (
    FloatArray,
    ModelHolder,
    TextModel,
    dense,
    tag_entities,
    unit_rows,
)
from jsorc_live.actions.registry import jsorc_action

DEFAULT_LABELS = ("PERSON", "LOCATION", "ORGANIZATION", "DATE", "TIME", "MONEY")
#: Sharpness of the label scores, the score of "no entity" (cosine units) and the logit added
#: to the labels of capitalised words (names are the likely entities, as in real text).
_TEMPERATURE = np.float32(12.0)
_NO_ENTITY = np.float32(0.35)
_CAPITAL_BONUS = 5.0

_model = ModelHolder(
    "ent_ext", lambda mb, seed: TextModel("ent_ext", mb, dim=512, layers=6, seed=seed)
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 4050 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def entity_detection(text: str, ner_labels: list[str] | None = None) -> list[dict[str, Any]]:
    """The entities of ``text`` among ``ner_labels`` (default: person, location,
    organisation, date, time, money)."""
    labels = list(ner_labels) if ner_labels else list(DEFAULT_LABELS)
    m = _model.get()
    label_vecs = m.embed(labels)

    def scores(x: FloatArray) -> FloatArray:
        sims = dense(unit_rows(x), label_vecs.T)
        none = np.full((len(x), 1), _NO_ENTITY, dtype=np.float32)
        return np.concatenate([none, sims], axis=1) * _TEMPERATURE

    return tag_entities(m, text, labels, scores, min_score=0.4, capital_bonus=_CAPITAL_BONUS)
