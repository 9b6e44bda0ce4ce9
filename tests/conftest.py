"""Shared test helpers. ../shared (fixtures, data) sits beside the repository in CI; tests that need it
skip when it is absent on a user's machine, and fail when it is absent under CI=true."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_file(*parts: str) -> Path:
    """A file of ../shared; a test that needs one skips on a user's machine without it, but fails in CI."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{path} is missing: CI runs with ../shared beside the repository")
        pytest.skip(f"{path} is not available (it ships beside the repository in CI)")
    return path


@pytest.fixture(scope="session")
def reference_losses() -> list[dict]:
    return json.loads(shared_file("fixtures", "reference_losses.json").read_text())["cases"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python run_kd.py ...` the way a user does; returns the finished process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / "run_kd.py"), *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_exploding_distiller(folder: Path, name: str, nan_when: str) -> Path:
    """A distiller module (for a recipe's `imports:`) whose extra loss term 'boom' is NaN when the Python
    expression `nan_when` holds; it sees `epoch`, `steps` (this distiller's forward calls so far) and `dist`."""
    path = folder / f"{name}.py"
    path.write_text(f"""
import torch
import torch.distributed as dist
from kd.distillers import DISTILLERS, Distiller


@DISTILLERS.register("{name}")
class Exploding(Distiller):
    needs_teacher = False

    def forward(self, images, targets, teacher=None, epoch=0):
        logits = self.student(images)
        self.steps = steps = getattr(self, "steps", 0) + 1
        boom = torch.tensor(float("nan") if {nan_when} else 0.0)
        return logits, {{"ce": self.ce(logits, targets), "boom": boom}}
""")
    return path
