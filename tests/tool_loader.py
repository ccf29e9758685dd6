"""Imports a script from ``tools/`` as a module (tools/ is not a package)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str) -> types.ModuleType:
    """``load_tool("ablate")`` imports ``tools/ablate.py`` as module ``ablate_tool``."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
