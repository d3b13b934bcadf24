"""The actions layer: action modules (``registry``), loading them in-process (``loader``),
serving them as action servers in Jaseci 1.4's protocol (``server``), calling servers
(``client``), and action configs (``config``); example actions in ``examples``.

The names below are importable from here; ``server`` (uvicorn, Starlette) is not imported
until used.
"""

from jsorc_live.actions.client import AsyncRemoteActions, RemoteActions
from jsorc_live.actions.config import ACTION_CONFIGS, ActionConfig, load_action_config
from jsorc_live.actions.loader import (
    ActionLoadError,
    AllowList,
    LocalModule,
    ModuleNotAllowedError,
)
from jsorc_live.actions.registry import (
    ActionArgumentError,
    ActionCallError,
    ActionSpec,
    actions_of,
    jsorc_action,
    spec_of,
)

__all__ = [
    "ACTION_CONFIGS",
    "ActionArgumentError",
    "ActionCallError",
    "ActionConfig",
    "ActionLoadError",
    "ActionSpec",
    "AllowList",
    "AsyncRemoteActions",
    "LocalModule",
    "ModuleNotAllowedError",
    "RemoteActions",
    "actions_of",
    "jsorc_action",
    "load_action_config",
    "spec_of",
]
