"""stt: a stand-in for jaseci_ai_kit's speech-to-text (~1500 MB, estimated): the audio is cut
in 50 ms frames, each frame's spectrum becomes a token, and every four frames the model says a
word of its vocabulary."""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import ModelHolder, TextModel, decode_audio
from jsorc_live.actions.registry import jsorc_action

FRAME_S = 0.05
FRAMES_PER_WORD = 4
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ba", "de", "fu", "go", "hi",
              "jo", "ku", "la")
#: The vocabulary: 512 pseudo-words, fixed.
VOCABULARY = tuple(
    _SYLLABLES[i % 16] + _SYLLABLES[(i // 16) % 16] + ("n" if i >= 256 else "")
    for i in range(512)
)

_model = ModelHolder(
    "stt",
    lambda mb, seed: TextModel(
        "stt", mb, dim=256, layers=4, heads={"words": len(VOCABULARY)}, seed=seed
    ),
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 1500 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def transcribe(audio: str, sample_rate: int = 8000) -> dict[str, Any]:
    """The text of ``audio`` (base64 16-bit PCM at ``sample_rate``):
    ``{"text", "words", "duration_s"}``."""
    if not 4000 <= sample_rate <= 48000:
        raise ValueError(f"sample_rate must be in [4000, 48000], got {sample_rate}")
    wave = decode_audio(audio)
    frame = round(sample_rate * FRAME_S)
    n = wave.size // frame
    if n == 0:
        return {"text": "", "words": 0, "duration_s": round(wave.size / sample_rate, 6)}
    frames = wave[: n * frame].reshape(n, frame)
    spectrum = np.abs(np.fft.rfft(frames, axis=1))
    bands = np.array_split(spectrum, 8, axis=1)
    energy = np.stack([b.mean(axis=1) for b in bands], axis=1)
    # A frame's token: the shape of its spectrum (band energies relative to the frame's
    # mean, in ten steps) and its loudness.
    mean = energy.mean(axis=1, keepdims=True)
    shape = np.clip(((energy / np.where(mean == 0, 1, mean) - 0.6) * 10).astype(int), 0, 9)
    loud = np.clip((np.log10(mean[:, 0] + 1e-9) + 4).astype(int), 0, 9)
    tokens = [f"{v}:" + "".join(map(str, row)) for v, row in zip(loud, shape, strict=True)]
    m = _model.get()
    x = m.forward(tokens)
    words = []
    for start in range(0, n, FRAMES_PER_WORD):
        v = x[start:start + FRAMES_PER_WORD].mean(axis=0)
        words.append(VOCABULARY[int(np.argmax(m.head("words", v[None, :])[0]))])
    return {"text": " ".join(words), "words": len(words),
            "duration_s": round(wave.size / sample_rate, 6)}
