"""vc_tts: a stand-in for jaseci_ai_kit's voice-cloning text-to-speech (~2600 MB, estimated):
50 ms of audio per character, as base64 16-bit PCM."""

from __future__ import annotations

from typing import Any

import numpy as np

from jsorc_live.actions.examples._model import ModelHolder, TextModel, encode_audio
from jsorc_live.actions.registry import jsorc_action

#: Samples the model makes per character (50 ms at 8 kHz), resampled to the asked rate.
FRAME = 400
FRAME_S = 0.05

_model = ModelHolder(
    "vc_tts",
    lambda mb, seed: TextModel("vc_tts", mb, dim=256, layers=4, heads={"wave": FRAME}, seed=seed),
)


@jsorc_action
def setup(memory_mb: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Allocate the weights: ``memory_mb`` MB (default 2600 MB × JSORC_ACTION_SCALE)."""
    return _model.setup(memory_mb, seed)


@jsorc_action
def synthesize(text: str, speaker: str = "default", sample_rate: int = 8000) -> dict[str, Any]:
    """Speech for ``text`` in ``speaker``'s voice: ``{"audio": base64 PCM16, "sample_rate",
    "samples", "duration_s"}``."""
    if not 4000 <= sample_rate <= 48000:
        raise ValueError(f"sample_rate must be in [4000, 48000], got {sample_rate}")
    chars = [c for c in text if not c.isspace()] or ["."]
    m = _model.get()
    x = m.forward([f"{speaker}\x00{c.lower()}" for c in chars])
    frames = np.tanh(m.head("wave", x)).astype(np.float64) * 0.8
    per_char = round(sample_rate * FRAME_S)
    src = np.linspace(0.0, 1.0, FRAME)
    dst = np.linspace(0.0, 1.0, per_char)
    wave = np.concatenate([np.interp(dst, src, f) for f in frames])
    return {
        "audio": encode_audio(wave),
        "sample_rate": sample_rate,
        "samples": int(wave.size),
        "duration_s": round(wave.size / sample_rate, 6),
    }
