"""Gradio's import without its stub writer: call skip_stub_regeneration() before the first
`import gradio`.

Every time Gradio is imported, each of its ~80 component classes re-reads and re-parses
its own source file and the `.pyi` stub beside it, to rewrite the stub if the class
changed (an aid for people editing Gradio's own tree: component_meta.create_or_modify_pyi).
In an installed Gradio the stubs are already there and already match, so the work changes
nothing, yet it is a quarter of the import: ~1 s of CPU in every process that starts
the dashboard (and in every test worker). The hook below lets Gradio's module load as usual
and only replaces that one function with one that does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

META_MODULE = "gradio.component_meta"
STUB_WRITER = "create_or_modify_pyi"


def _write_no_stub(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for Gradio's stub writer: the installed stubs stay as they are."""


class _MetaLoader(importlib.abc.Loader):
    """Gradio's own loader for component_meta, then the stub writer swapped out."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        if hasattr(module, STUB_WRITER):
            setattr(module, STUB_WRITER, _write_no_stub)
        else:  # a Gradio that no longer has it: nothing to skip
            log.debug("%s has no %s", META_MODULE, STUB_WRITER)


class _StubWriterSkipper(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != META_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _MetaLoader(spec.loader)
        return spec


def skip_stub_regeneration() -> None:
    """Installs the hook (once per process). Too late once Gradio is imported: then the
    import has already paid, and this changes nothing."""
    if not any(isinstance(finder, _StubWriterSkipper) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StubWriterSkipper())
