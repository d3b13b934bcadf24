"""Loading action modules into this process ("module" mode), calling them, unloading them.

Imports are restricted to an :class:`AllowList`: module names that action configs name, and
files an operator registered. A name that comes from a request is looked up there and refused
with :class:`ModuleNotAllowedError` otherwise, never imported on trust.

Each :class:`LocalModule` executes its own copy of the module (a fresh module object, not the
one in ``sys.modules``), so its weights belong to it alone: two loads are independent, and an
unload frees exactly what the load took. The memory is measured as the change of this
process's resident set (psutil) around the load and the unload; it is process-wide, so other
threads allocating at the same time blur it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import inspect
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from jsorc_live.actions.config import ACTION_CONFIGS, ActionConfig
from jsorc_live.actions.registry import (
    ActionCallError,
    ActionSpec,
    actions_of,
    find_action,
    spec_of,
)

__all__ = [
    "ActionLoadError",
    "AllowList",
    "LocalModule",
    "ModuleNotAllowedError",
    "rss_mb",
]

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_MB = 1024 * 1024


class ActionLoadError(ImportError):
    """An action module that cannot be loaded (not installed, fails to import, bad setup)."""


class ModuleNotAllowedError(ActionLoadError):
    """A module that is not on the allow-list."""

    def __init__(self, module_name: str, allowed: Iterable[str]) -> None:
        self.module_name = module_name
        names = sorted(allowed)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        super().__init__(
            f"action module {module_name!r} is not allowed: only modules named in action "
            f"configs or registered files can be loaded (allowed: {shown or 'none'})"
        )


class AllowList:
    """The action modules this process may import: module names (of installed packages)
    and files registered under a module name. Thread-safe; widen it from operator code,
    never from a request."""

    def __init__(
        self, modules: Iterable[str] = (), files: Mapping[str, str | Path] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._modules: set[str] = set()
        self._files: dict[str, Path] = {}
        for m in modules:
            self.allow(m)
        for name, path in (files or {}).items():
            self.register_file(path, name)

    @classmethod
    def from_configs(
        cls, configs: Mapping[str, ActionConfig] | Iterable[ActionConfig] | None = None
    ) -> AllowList:
        """The modules named in ``configs`` (default: the example actions' configs)."""
        items = ACTION_CONFIGS if configs is None else configs
        values = items.values() if isinstance(items, Mapping) else items
        return cls(c.module for c in values)

    def allow(self, module_name: str) -> None:
        """Allow an installed module by name."""
        _check_module_name(module_name)
        with self._lock:
            self._modules.add(module_name)

    def register_file(self, path: str | Path, module_name: str | None = None) -> str:
        """Allow the Python file at ``path`` under ``module_name`` (default: its stem);
        returns the name to load it by."""
        file = Path(path).resolve()
        if file.suffix != ".py" or not file.is_file():
            raise ActionLoadError(f"action file {str(path)!r} is not an existing .py file")
        name = module_name or file.stem
        _check_module_name(name)
        with self._lock:
            self._files[name] = file
        return name

    @property
    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._modules | set(self._files))

    def __contains__(self, module_name: object) -> bool:
        return module_name in self.names

    def find_spec(self, module_name: str) -> ModuleSpec:
        """Where to load ``module_name`` from; refuses names not on the list."""
        _check_module_name(module_name)
        with self._lock:
            file = self._files.get(module_name)
            allowed = module_name in self._modules
        if file is not None:
            spec = importlib.util.spec_from_file_location(module_name, file)
        elif allowed:
            try:
                spec = importlib.util.find_spec(module_name)
            except ImportError as e:  # a parent package that does not exist or fails
                raise ActionLoadError(f"action module {module_name!r} is not installed: {e}") from e
        else:
            raise ModuleNotAllowedError(module_name, self.names)
        if spec is None or spec.loader is None:
            raise ActionLoadError(f"action module {module_name!r} is not installed")
        return spec


def _check_module_name(name: str) -> None:
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        raise ActionLoadError(f"{name!r} is not a module name")


def rss_mb() -> float:
    """This process's resident set size in MB."""
    return float(psutil.Process().memory_info().rss) / _MB


def _release_freed_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS.

    Large numpy arrays are mmap'ed and leave RSS on free, but glibc raises its mmap
    threshold after such a free (up to 32 MB), so later arrays of a few MB live on the heap,
    where freed pages stay resident until ``malloc_trim``.
    """
    gc.collect()
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        # Not glibc (musl has no malloc_trim): nothing to do.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)


class LocalModule:
    """An action module loaded in this process. Make one with :meth:`load`.

    ``memory_mb`` is the resident memory the load took (RSS after minus before), and
    ``released_mb`` what the unload gave back; ``rss_before_mb``, ``rss_loaded_mb`` and
    ``rss_unloaded_mb`` are the readings. Calls are thread-safe as far as the module's
    functions are; :meth:`unload` waits for calls in flight and refuses new ones.
    """

    def __init__(
        self,
        name: str,
        module: ModuleType,
        actions: dict[str, ActionSpec],
        *,
        rss_before_mb: float,
        rss_loaded_mb: float,
        load_s: float,
        setup_result: Any = None,
    ) -> None:
        self.name = name
        self.url = f"module:{name}"
        self._module: ModuleType | None = module
        self._actions = actions
        self.rss_before_mb = rss_before_mb
        self.rss_loaded_mb = rss_loaded_mb
        self.rss_unloaded_mb: float | None = None
        self.load_s = load_s
        self.setup_result = setup_result
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False

    @classmethod
    def load(
        cls,
        module_name: str,
        *,
        allow: AllowList | None = None,
        setup: Mapping[str, Any] | None = None,
    ) -> LocalModule:
        """Import ``module_name`` (it must be on ``allow``, default
        :meth:`AllowList.from_configs`), run its ``setup()`` with its defaults, overridden by
        ``setup``, and measure the memory it took."""
        spec = (allow or AllowList.from_configs()).find_spec(module_name)
        _release_freed_memory()
        before = rss_mb()
        start = time.perf_counter()
        module = importlib.util.module_from_spec(spec)
        try:
            _exec_module(module, spec)
            actions = actions_of(module)
            result = _run_setup(module, actions, dict(setup or {}))
        except BaseException:
            module.__dict__.clear()
            del module
            _release_freed_memory()
            raise
        load_s = time.perf_counter() - start
        gc.collect()
        return cls(
            module_name,
            module,
            actions,
            rss_before_mb=before,
            rss_loaded_mb=rss_mb(),
            load_s=load_s,
            setup_result=result,
        )

    @property
    def memory_mb(self) -> float:
        """Resident memory the load took, in MB (RSS after the load minus before)."""
        return self.rss_loaded_mb - self.rss_before_mb

    @property
    def released_mb(self) -> float | None:
        """Resident memory the unload gave back, in MB; None while loaded."""
        if self.rss_unloaded_mb is None:
            return None
        return self.rss_loaded_mb - self.rss_unloaded_mb

    @property
    def loaded(self) -> bool:
        return self._module is not None and not self._closing

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def actions(self) -> Mapping[str, ActionSpec]:
        return dict(self._actions)

    def spec(self, *, remote_only: bool = False) -> dict[str, list[str]]:
        """The module's Jaseci spec (every action, or only those allowed remote)."""
        return spec_of(self._actions, remote_only=remote_only)

    def action(self, name: str) -> ActionSpec:
        """The action called ``name`` (a name, alias, or either as ``group.name``)."""
        found = find_action(self._actions, name)
        if found is None:
            raise ActionCallError(self.url, name, 404, f"no action {name!r} in {self.name}")
        return found

    def call(self, name: str, kwargs: Mapping[str, Any] | None = None) -> Any:
        """Call action ``name`` with JSON-style parameters (see ``registry.ActionSpec.bind``).

        Raises :class:`ActionCallError` as an action server would answer: 404 for an unknown
        action, 422 (:class:`ActionArgumentError`) for parameters that do not fit, 500 when
        the action raises (the original exception is its ``__cause__``), 503 after unload.
        """
        with self._cond:
            if not self.loaded:
                raise ActionCallError(self.url, name, 503, f"module {self.name} is unloaded")
            spec = self.action(name)
            self._in_flight += 1
        try:
            args, kw = spec.bind(kwargs or {}, url=self.url)
            try:
                return spec.fn(*args, **kw)
            except Exception as e:
                raise ActionCallError(self.url, spec.key, 500, f"{type(e).__name__}: {e}") from e
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def unload(self, timeout_s: float = 30.0) -> float:
        """Refuse new calls, wait up to ``timeout_s`` for calls in flight, drop the module
        and collect it; returns the MB released. Raises TimeoutError (still loaded, accepting
        calls again) when calls are still running after ``timeout_s``."""
        with self._cond:
            if self._module is None:
                return self.released_mb or 0.0
            self._closing = True
            if not self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout_s):
                self._closing = False
                raise TimeoutError(
                    f"{self.name}: {self._in_flight} calls still running after {timeout_s} s"
                )
            module, self._module = self._module, None
        self._actions = {}
        # Other references to the module's functions (or to the module) would keep its
        # globals alive; emptying its namespace frees the weights whatever still points at it.
        module.__dict__.clear()
        del module
        _release_freed_memory()
        self.rss_unloaded_mb = rss_mb()
        return self.released_mb or 0.0

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "unloaded"
        return f"<LocalModule {self.name} {state} {self.memory_mb:.1f} MB>"


def _exec_module(module: ModuleType, spec: ModuleSpec) -> None:
    """Run the module's code. It sits in ``sys.modules`` only while its body runs (for the
    decorators and dataclasses that look themselves up there); the previous entry, if any,
    is put back, so the shared import state is left as it was."""
    assert spec.loader is not None
    previous = sys.modules.get(spec.name)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ActionLoadError(f"action module {spec.name!r} failed to import: {e}") from e
    finally:
        if previous is None:
            sys.modules.pop(spec.name, None)
        else:
            sys.modules[spec.name] = previous


def _run_setup(
    module: ModuleType, actions: Mapping[str, ActionSpec], kwargs: dict[str, Any]
) -> Any:
    """Call the module's ``setup(...)`` if it has one; every parameter must have a default."""
    fn = getattr(module, "setup", None)
    if fn is None:
        if kwargs:
            raise ActionLoadError(f"action module {module.__name__!r} has no setup() to take "
                                  f"{sorted(kwargs)}")
        return None
    if not callable(fn):
        raise ActionLoadError(f"action module {module.__name__!r}: setup is not a function")
    spec = find_action(actions, "setup") or ActionSpec.of(fn, group=module.__name__)
    required = [
        p.name for p in inspect.signature(fn).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise ActionLoadError(
            f"action module {module.__name__!r}: setup() parameters {required} have no "
            "default; every setup parameter needs one"
        )
    try:
        return spec.call(kwargs, url=f"module:{module.__name__}")
    except Exception as e:
        raise ActionLoadError(f"action module {module.__name__!r}: setup() failed: {e}") from e
