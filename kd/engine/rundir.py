"""Run directories and the metrics file: every run gets its own folder, and no finished epoch is lost."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """<output_dir>/<name>-<YYYYmmdd-HHMMSS>, with -2, -3 ... when that exists: never an existing one."""
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = base / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            path.mkdir()  # atomic: two runs started in the same second get different folders
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not make a run directory under {base}")


class MetricsFile:
    """metrics.csv, one row per epoch, appended, flushed and fsynced row by row."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                self.columns = next(csv.reader(f), None)

    def append(self, row: dict) -> None:
        new = self.columns is None
        if new:
            self.columns = list(row)
        elif any(k not in self.columns for k in row):
            # a loss term that starts later (after a warm-up): rewrite the file once with the wider header
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite(self.rows())
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())

    def replace(self, rows: list[dict]) -> None:
        """Make the file hold exactly `rows` (a resumed run restores what its checkpoint knew)."""
        if not rows:
            self.path.unlink(missing_ok=True)
            self.columns = None
            return
        self.columns = list(dict.fromkeys(k for row in rows for k in row))
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))
