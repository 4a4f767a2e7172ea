"""Old `python -m runner.X` names kept working after their module moved (README names them)."""

from __future__ import annotations

import importlib
import sys


def alias(name: str, target: str) -> None:
    """Module `name` becomes `target`: run as a program, `target.main()`; imported, the very
    same module object (so attributes and monkeypatches are shared)."""
    mod = importlib.import_module(target)
    if name == "__main__":
        sys.exit(mod.main())
    sys.modules[name] = mod
