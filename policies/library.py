"""Imports every built-in policy module so that its `register` decorators run."""

from __future__ import annotations

from policies import autoscalers, baselines, compose, guards, jsorc, model_based

__all__ = ["autoscalers", "baselines", "compose", "guards", "jsorc", "model_based"]
