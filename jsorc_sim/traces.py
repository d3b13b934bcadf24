"""The trace readers, which live in `jsorc_traces` so the live system can share them."""

from __future__ import annotations

from jsorc_traces.readers import (
    FORMATS,
    LLM_SIZES,
    SPREADS,
    Arrivals,
    TraceError,
    detect_format,
    read_trace,
)

__all__ = ["FORMATS", "LLM_SIZES", "SPREADS", "Arrivals", "TraceError", "detect_format",
           "read_trace"]
