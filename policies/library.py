"""Imports every built-in policy module so that its `register` decorators run."""

from __future__ import annotations

from policies import baselines

__all__ = ["baselines"]
