"""tfm_ner: a stand-in for jaseci_ai_kit's transformer named-entity recognition (1014 MB real).

``extract_entity(text)`` tags tokens PER / ORG / LOC / MISC and returns the entities as
jaseci_ai_kit does (``entity_text``, ``entity_value``, ``conf_score``, ``start_pos``,
``end_pos``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import FloatArray, ModelHolder, TextModel, tag_entities
from jsorc_live.actions.registry import jsorc_action

LABELS = ("PER", "ORG", "LOC", "MISC")
#: Logit added to "no entity", and to the entity labels of capitalised words, so that most
#: tokens are not entities and names are the likely ones, as in real text.
_NO_ENTITY_BIAS = np.float32(2.5)
_CAPITAL_BONUS = 5.0

_model = ModelHolder(
    "tfm_ner",
    lambda mb, seed: TextModel(
        "tfm_ner", mb, dim=256, layers=4, heads={"ner": 1 + len(LABELS)}, seed=seed
    ),
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 1014 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def extract_entity(text: str) -> list[dict[str, Any]]:
    """The named entities of ``text``."""
    m = _model.get()

    def scores(x: FloatArray) -> FloatArray:
        s = m.head("ner", x)
        s[:, 0] += _NO_ENTITY_BIAS
        return s

    return tag_entities(m, text, LABELS, scores, min_score=0.4, capital_bonus=_CAPITAL_BONUS)
