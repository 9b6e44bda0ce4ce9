"""TensorBoard logging (recipe `log: [csv, tensorboard]`): every scalar of a student's metrics rows, one event
per epoch, tagged with the same names as the columns of metrics.csv (which stays the source of the tables).

TensorBoard is an optional extra (pip install 'kd[tensorboard]'): require_tensorboard refuses a recipe that asks
for it, in one line, before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from kd.errors import KDError


def require_tensorboard(where: str) -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401  (it imports the tensorboard package)
    except ImportError:
        raise KDError(f"{where}: log lists tensorboard, but the tensorboard package is not installed; install it "
                      f"(pip install 'kd[tensorboard]', or pip install tensorboard), or remove tensorboard from log") from None


class TensorBoardLog:
    """One student's event files in `folder`, opened with its first row, so that a process that never writes
    (a torchrun rank other than 0) makes no folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer = None

    def add(self, row: dict) -> None:
        """Log the numbers of one metrics row at step row['epoch'] (1-based), flushed at once."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed student rewrites the epochs after its checkpoint; TensorBoard then hides
            # the events an interrupted run had logged for them, as metrics.csv drops their rows
            self.writer = SummaryWriter(str(self.folder), purge_step=row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
