"""Register rethinktiny into InternEvo whenever both are imported, in either order.

`import rethinktiny` must stay cheap and must not import `internlm` (it takes seconds, logs a
dozen warnings, and the core must work where InternEvo is not installed). So:
- if `internlm` is already imported, register now;
- otherwise put a finder on `sys.meta_path` that, when `internlm` itself is imported later,
  registers right after InternEvo's package `__init__` has finished (at that point every
  InternEvo module the plugin needs is importable, so there is no half-initialised import).
Set RETHINKTINY_NO_INTERNEVO=1 to switch this off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any


def _register() -> None:
    from rethinktiny.internevo import register

    register()


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps InternEvo's own loader; after `internlm/__init__.py` ran, registers the plugin."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._inner, name)


class _InternEvoFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "internlm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the search below from recursing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    if os.environ.get("RETHINKTINY_NO_INTERNEVO") == "1":
        return
    module = sys.modules.get("internlm", False)
    if module is None:  # deliberately blocked (sys.modules["internlm"] = None)
        return
    if module is not False:
        spec = getattr(module, "__spec__", None)
        if not getattr(spec, "_initializing", False):
            _register()
        return
    if not any(isinstance(f, _InternEvoFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _InternEvoFinder())
