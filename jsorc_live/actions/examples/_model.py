"""The numpy "model" behind the example actions.

A :class:`TextModel` behaves like a transformer for placement purposes: at load it allocates
and initialises real weights (an embedding table that takes nearly all of its memory, and a
few dense layers), and every call does numpy work proportional to its input (a row lookup and
``layers`` dense products per token). Nothing is learnt: outputs are deterministic functions
of the input, the action's name, the seed and the memory size (the table's row count), which
is all a placement experiment needs. Tokens are hashed with CRC-32, not ``hash()``, so every
process (the runtime and each replica) maps a token to the same row.

The products go through :func:`dense` (numpy's own einsum loops), not BLAS: a call then works
on one core, as the simulator models a call, whatever BLAS's thread count; concurrent calls
still run on different cores (the loops release the GIL); and results do not depend on how
BLAS splits the work, so a local copy and a replica answer bit for bit alike. Multi-threaded
BLAS on a busy 2-core machine also made call times erratic (tens of ms to seconds).
"""

from __future__ import annotations

import base64
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from jsorc_live.actions.config import scaled_memory_mb

FloatArray = npt.NDArray[np.float32]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_MB = 1024 * 1024
#: Digits kept in returned floats: float32 carries ~7, and rounding keeps answers compact.
DIGITS = 6


def dense(x: FloatArray, w: FloatArray) -> FloatArray:
    """``x @ w`` on one core (see the module's docstring)."""
    out: FloatArray = np.einsum("ij,jk->ik", x, w, optimize=False)
    return out


class TextModel:
    """Weights of ``memory_mb`` MB (float32) for action ``name``: an embedding table of
    ``rows × dim`` plus ``layers`` dense ``dim × dim`` matrices and named heads."""

    def __init__(
        self,
        name: str,
        memory_mb: float,
        *,
        dim: int = 256,
        layers: int = 4,
        heads: dict[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        if not memory_mb > 0:
            raise ValueError(f"{name}: memory_mb must be > 0, got {memory_mb!r}")
        self.name = name
        self.dim = dim
        self.seed = seed
        rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
        scale = np.float32(1 / np.sqrt(dim))
        self.layers = [
            rng.standard_normal((dim, dim), dtype=np.float32) * scale for _ in range(layers)
        ]
        self.heads = {
            h: rng.standard_normal((dim, width), dtype=np.float32) * scale
            for h, width in (heads or {}).items()
        }
        dense = sum(w.nbytes for w in self.layers) + sum(w.nbytes for w in self.heads.values())
        self.rows = max(64, (int(memory_mb * _MB) - dense) // (dim * 4))
        # standard_normal writes every element, so the pages are really resident.
        self.table = rng.standard_normal((self.rows, dim), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return int(
            self.table.nbytes + sum(w.nbytes for w in self.layers)
            + sum(w.nbytes for w in self.heads.values())
        )

    def info(self) -> dict[str, Any]:
        return {"action": self.name, "memory_mb": round(self.nbytes / _MB, 3),
                "rows": self.rows, "dim": self.dim, "layers": len(self.layers),
                "seed": self.seed}

    @staticmethod
    def tokens(text: str) -> list[str]:
        return _TOKEN.findall(text.lower())

    def token_ids(self, tokens: Sequence[str]) -> npt.NDArray[np.int64]:
        return np.fromiter(
            (zlib.crc32(t.encode()) % self.rows for t in tokens), dtype=np.int64, count=len(tokens)
        )

    def forward(self, tokens: Sequence[str]) -> FloatArray:
        """Contextual vectors, one row per token (``(n, dim)``): the work of a call."""
        ids = self.token_ids(tokens if tokens else ["<empty>"])
        x = self.table[ids]
        for w in self.layers:
            context = x.mean(axis=0, keepdims=True)
            x = np.tanh(dense(x, w) + 0.5 * context) + 0.5 * x
        return x

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """One unit vector per text (mean of its token vectors): ``(len(texts), dim)``."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            v = self.forward(self.tokens(text)).mean(axis=0)
            out[i] = v / (np.linalg.norm(v) or 1.0)
        return out

    def head(self, name: str, x: FloatArray) -> FloatArray:
        return dense(x, self.heads[name])

    def encode(self, head: str, texts: Sequence[str]) -> FloatArray:
        """One unit vector per text, through output head ``head``."""
        return unit_rows(self.head(head, self.embed(texts)))


def unit_rows(x: FloatArray) -> FloatArray:
    """Each row scaled to length 1 (a zero row stays zero), as float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


class ModelHolder:
    """An action module's model, built by ``setup()`` and on first use. Thread-safe."""

    def __init__(self, name: str, build: Callable[[float, int], TextModel]) -> None:
        self.name = name
        self._build = build
        self._lock = threading.Lock()
        self._model: TextModel | None = None

    def setup(self, memory_mb: float | None, seed: int) -> dict[str, Any]:
        """(Re)build the model with ``memory_mb`` (default: the scaled real size)."""
        mb = scaled_memory_mb(self.name) if memory_mb is None else memory_mb
        with self._lock:
            self._model = None  # free the old weights before allocating new ones
            self._model = self._build(mb, seed)
            return self._model.info()

    def get(self) -> TextModel:
        with self._lock:
            model = self._model
        if model is None:
            self.setup(None, 0)
            return self.get()
        return model


def texts_of(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def rounded(x: FloatArray | float) -> Any:
    """Plain JSON-ready floats (lists for arrays), rounded to :data:`DIGITS`."""
    if isinstance(x, np.ndarray):
        return np.round(x.astype(np.float64), DIGITS).tolist()
    return round(float(x), DIGITS)


def cosine(a: Sequence[float] | FloatArray, b: Sequence[float] | FloatArray) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape or va.ndim != 1:
        raise ValueError(f"vectors must be 1-D of one length, got {va.shape} and {vb.shape}")
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return round(float(va @ vb) / denom, DIGITS) if denom else 0.0


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def tag_entities(
    model: TextModel,
    text: str,
    labels: Sequence[str],
    scores_of: Callable[[FloatArray], FloatArray],
    min_score: float,
    capital_bonus: float = 0.0,
) -> list[dict[str, Any]]:
    """Entities as jaseci_ai_kit's NER actions return them: runs of word tokens whose best
    label (``scores_of`` gives per-token label scores, column 0 meaning "no entity") is the
    same and scores at least ``min_score``. ``capital_bonus`` is added to the entity scores
    of capitalised words, which makes names the likely entities, as in real text."""
    spans = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+", text)]
    if not spans:
        return []
    x = model.forward([s.lower() for s, _, _ in spans])
    scores = scores_of(x)
    capital = np.array([s[0].isupper() for s, _, _ in spans])
    scores[capital, 1:] += np.float32(capital_bonus)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(spans):
        label = int(best[i])
        if label == 0 or probs[i, label] < min_score:
            i += 1
            continue
        j = i
        while j + 1 < len(spans) and int(best[j + 1]) == label:
            j += 1
        out.append({
            "entity_text": text[spans[i][1]:spans[j][2]],
            "entity_value": labels[label - 1],
            "conf_score": round(float(probs[i:j + 1, label].mean()), DIGITS),
            "start_pos": spans[i][1],
            "end_pos": spans[j][2],
        })
        i = j + 1
    return out


def encode_audio(samples: npt.NDArray[np.float64]) -> str:
    """16-bit PCM, base64."""
    pcm = np.clip(samples, -1.0, 1.0) * 32767
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")


def decode_audio(audio: str) -> npt.NDArray[np.float32]:
    raw = base64.b64decode(audio.encode("ascii"), validate=True)
    if len(raw) % 2:
        raise ValueError("audio must be 16-bit PCM (an even number of bytes)")
    return (np.frombuffer(raw, dtype="<i2") / np.float32(32767)).astype(np.float32)
