"""Where kd finds its pair registry, recipes and published numbers, and where teacher checkpoints live.

The kd home is the first of:
1. $KD_HOME, when set;
2. the current working directory, when it holds teachers/pairs.yaml (a project of your own);
3. the source checkout kd runs from (the folder above the kd package), when it holds teachers/pairs.yaml;
4. ~/.cache/kd (an installed kd outside any checkout).
Files (teachers/pairs.yaml, recipes/..., results/published_cifar100.csv) are read from the home when it has
them, else from the copies packaged with kd (kd/_home, filled by setup.py when a wheel is built). Teacher
checkpoint paths in pairs.yaml are relative to the home, which is also where on-demand teachers are written.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
PACKAGED = PACKAGE / "_home"
PAIRS = Path("teachers") / "pairs.yaml"


def home() -> Path:
    if os.environ.get("KD_HOME"):
        return Path(os.environ["KD_HOME"]).expanduser()
    for candidate in (Path.cwd(), CHECKOUT):
        if (candidate / PAIRS).is_file():
            return candidate
    return Path.home() / ".cache" / "kd"


def find(relative: str | Path) -> Path:
    """A file of kd's own (pairs.yaml, a recipe, ...) by its path relative to the home: the home's copy, else
    the packaged one; the home's path when neither exists (so that messages name where it was expected)."""
    for base in (home(), PACKAGED):
        if (base / relative).exists():
            return base / relative
    return home() / relative


def recipe_roots() -> list[Path]:
    """The recipes/ folders `run_kd.py list recipes` shows (the home's, else the packaged ones)."""
    return [base / "recipes" for base in (home(), PACKAGED) if (base / "recipes").is_dir()][:1]
