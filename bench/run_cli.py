"""The one way the bench scripts call kd's command line: `python run_kd.py ARGS` from the repository root, with
the checkout on PYTHONPATH, stopping the script if the command fails."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kd(*args: str) -> float:
    """Run `run_kd.py ARGS`; the seconds it took."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_kd.py"), *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start
