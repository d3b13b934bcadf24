"""Readers of real arrival traces, shared by the simulator (replay) and the live system
(`jsorc loadtest --trace`). Imports neither jsorc_sim nor jsorc_live (import-linter checks)."""

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
from jsorc_traces.windows import TraceWindows, Window, read_windows

__all__ = ["FORMATS", "LLM_SIZES", "SPREADS", "Arrivals", "TraceError", "TraceWindows", "Window",
           "detect_format", "read_trace", "read_windows"]
