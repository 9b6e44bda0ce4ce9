"""Run directories: the one owner of their layout, their files and their lock.

    <output_dir>/<name>-<YYYYmmdd-HHMMSS>[-N]/
        recipe.yaml                  the fully resolved recipe (loading it again gives the same run)
        recipe.sha256                its fingerprint: a recipe.yaml edited by hand since is refused
        report/                      the tables and pictures `compare` and `report` write
        summary.csv                  one row per student, written when every student has finished
        <label>-s<seed>/             one folder per student (StudentDir)
            metrics.csv              one row per epoch
            checkpoints/last.pt      the full resumable state (last.pt.prev: the one before)
            checkpoints/best.pt      the student's weights at its best epoch
        localisation.csv             CAM localisation scores, written by `report` (data sets with boxes)
        tensorboard/<label>-s<seed>/ TensorBoard event files per student (recipe `log: [csv, tensorboard]`), so that
                                     `tensorboard --logdir <run>/tensorboard` shows every student of the run
        .lock                        held (flock) by the process training in it

Every other module reaches these files through RunDir and StudentDir; nothing else spells a path.
"""
from __future__ import annotations

import csv
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kd.engine.checkpoint import RESUME_ADVICE, previous, read_checkpoint, write_atomic
from kd.errors import KDError, WriteFailed

RECIPE = "recipe.yaml"
FINGERPRINT = "recipe.sha256"  # of the recipe a run started with: a recipe.yaml edited since is refused
SUMMARY = "summary.csv"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class StudentDir:
    """The folder of one student (method label and seed) of a run."""

    path: Path
    label: str
    seed: int

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def tensorboard_dir(self) -> Path:
        """Beside the other students' (not inside this folder): one --logdir shows them all."""
        return self.path.parent / TENSORBOARD / self.path.name

    def last_state(self) -> dict | None:
        """The newest readable resumable checkpoint, falling back to the previous one if the newest is corrupt;
        None when the student has none yet."""
        import sys

        errors = []
        for path in (self.last_checkpoint, previous(self.last_checkpoint)):
            if not path.is_file():
                continue
            try:
                state = read_checkpoint(path, "checkpoint")
            except KDError as err:
                errors.append(str(err))
                continue
            if isinstance(state, dict) and "distiller" in state and "history" in state:
                if errors:
                    print(f"warning: {errors[0]}; resuming from {path} instead", file=sys.stderr)
                return state
            errors.append(f"{path} is not a resumable checkpoint")
        if errors:
            raise KDError(f"cannot resume {self.path}: {errors[-1]}")
        return None


def student_folder_name(label: str, seed: int) -> str:
    return f"{label}-s{seed}"


class RunDir:
    """One run directory: paths, the recipe and summary files, resume checks and the lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---------------------------------------------------------------- making and finding

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> "RunDir":
        """<output_dir>/<name>-<YYYYmmdd-HHMMSS>, with -2, -3 ... when that exists: never an existing one."""
        base = Path(output_dir)
        base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            path = base / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
            try:
                path.mkdir()  # atomic: two runs started in the same second get different folders
                return cls(path)
            except FileExistsError:
                continue
        raise KDError(f"could not make a run directory under {base}: 999 runs named '{name}' this second")

    @classmethod
    def open(cls, path: str | Path, what: str = "resume") -> "RunDir":
        """An existing run directory, or one line saying why `path` is not one."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise KDError(f"{what}: {run.path} is a file, not a run directory; pass the folder a run printed")
        if not run.path.is_dir():
            raise KDError(f"{what}: {run.path} is not a run directory (no such folder); pass a folder a run printed")
        if not run.recipe_file.is_file():
            raise KDError(f"{what}: {run.path} is not a run directory (it has no {RECIPE}); pass a folder a run printed")
        return run

    @classmethod
    def find_interrupted(cls, output_dir: str | Path, name: str, recipe_yaml: str) -> "RunDir | None":
        """The newest run directory of this same recipe that has no summary yet (it was interrupted)."""
        candidates = sorted(Path(output_dir).glob(f"{name}-*/{RECIPE}"), key=lambda p: p.stat().st_mtime,
                            reverse=True)
        for saved in candidates:
            run = cls(saved.parent)
            if not run.finished and not run.recipe_differences(recipe_yaml) and run.in_use() is None:
                return run  # a run a live process trains in is not interrupted: a new one starts beside it
        return None

    @classmethod
    def holding(cls, checkpoint: str | Path) -> "tuple[RunDir, StudentDir] | None":
        """The run directory and student a checkpoint file belongs to (<run>/<label>-s<seed>/checkpoints/x.pt),
        or None for a file elsewhere."""
        path = Path(checkpoint).resolve()
        if path.parent.name != "checkpoints" or len(path.parents) < 3:
            return None
        label, sep, seed = path.parents[1].name.rpartition("-s")
        run = cls(path.parents[2])
        if not (sep and seed.isdigit() and run.recipe_file.is_file()):
            return None
        return run, StudentDir(path.parents[1], label, int(seed))

    @staticmethod
    def check_writable(output_dir: str | Path) -> None:
        """Refuse, before any data or teacher is loaded, an output_dir where no run directory can be made.
        Probes the deepest folder that exists with a folder made and removed again: nothing stays behind."""
        base = Path(output_dir).expanduser()
        existing = next(p for p in [base, *base.parents] if p.exists())
        if not existing.is_dir():
            raise KDError(f"output_dir {base}: {existing} is a file, not a folder; set output_dir to a folder")
        probe = existing / f".kd-write-test-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as err:
            raise KDError(f"output_dir {base} is not writable ({existing}: {err.strerror or err}); set output_dir "
                          f"to a folder you can write to") from None

    # ---------------------------------------------------------------- files

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def localisation_file(self) -> Path:
        return self.path / "localisation.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def finished(self) -> bool:
        return self.summary_file.exists()

    def student(self, label: str, seed: int) -> StudentDir:
        return StudentDir(self.path / student_folder_name(label, seed), label, seed)

    def students(self) -> list[StudentDir]:
        """Every student folder that holds metrics, in the recipe's order of methods, then by seed."""
        order = {m: i for i, m in enumerate(self.recipe_mapping().get("methods") or [])}
        found = []
        for metrics in self.path.glob("*/metrics.csv"):
            label, sep, seed = metrics.parent.name.rpartition("-s")
            if sep and seed.isdigit():
                found.append(StudentDir(metrics.parent, label, int(seed)))
        return sorted(found, key=lambda s: (order.get(s.label, len(order)), s.label, s.seed))

    def write_recipe(self, text: str, note: str = "") -> None:
        """recipe.yaml; `note` becomes a comment line above it (what the run resolved on its machine)."""
        write_atomic(self.recipe_file, ((f"# {note}\n" if note else "") + text).encode())
        write_atomic(self.path / FINGERPRINT, f"{fingerprint(yaml.safe_load(text))}\n".encode())

    @property
    def report_dir(self) -> Path:
        """Where `compare` and `report` write this run's tables and pictures by default."""
        return self.path / "report"

    def recipe(self, overrides: list[str] = ()):
        """recipe.yaml as a validated Recipe, `overrides` applied; its resume key is cleared first (the saved
        recipe describes the run itself), so a resume sets it again through `overrides`."""
        from kd.recipe import load_recipe

        self.recipe_mapping()  # a recipe.yaml edited since the run started is refused before it is used
        return load_recipe(self.recipe_file, ["resume=null", *overrides])

    def recipe_mapping(self) -> dict:
        """recipe.yaml as a plain mapping (for reports and resume checks; kd.recipe.load_recipe validates it)."""
        try:
            data = yaml.safe_load(self.recipe_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise KDError(f"{self.recipe_file} cannot be read ({err}); the run directory is damaged") from None
        if not isinstance(data, dict):
            raise KDError(f"{self.recipe_file} is not a recipe mapping; the run directory is damaged")
        saved = self.path / FINGERPRINT
        if saved.is_file() and saved.read_text().strip() != fingerprint(data):
            raise KDError(f"{self.recipe_file} was changed after the run started (it no longer matches {saved}): "
                          f"the checkpoints were trained with the recipe as first written, so neither resume nor "
                          f"report can use the edited one; put the original back, or train the changed recipe as a "
                          f"new run")
        return data

    def recipe_differences(self, recipe_yaml: str) -> list[str]:
        """The top-level keys whose values differ between this run's recipe and `recipe_yaml` (resume ignored; a
        key missing from a recipe saved before it existed counts as its default)."""
        from kd.recipe import default_of

        ours, theirs = yaml.safe_load(recipe_yaml), self.recipe_mapping()
        ours.pop("resume", None), theirs.pop("resume", None)
        return [k for k in dict.fromkeys([*ours, *theirs]) if ours.get(k, default_of(k)) != theirs.get(k, default_of(k))]

    def write_summary(self, rows: list[dict]) -> None:
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.summary_file, text.getvalue().encode(), advice=RESUME_ADVICE)

    def summary_rows(self) -> list[dict]:
        if not self.summary_file.is_file():
            return []
        with open(self.summary_file, newline="") as f:
            return list(csv.DictReader(f))

    def discard_if_unused(self) -> bool:
        """Remove a run directory in which no student has finished an epoch (a run that failed at once);
        whether it was removed."""
        import shutil

        if any(self.path.glob("*/metrics.csv")):
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    def archive(self, destination: str | Path) -> "RunDir":
        """Copy what rebuilds this run's tables (recipe, summary, localisation scores, every student's
        metrics.csv), not its checkpoints, to `destination`: the raw record kept beside committed results."""
        import shutil

        destination = Path(destination)
        for name in (RECIPE, FINGERPRINT, SUMMARY, self.localisation_file.name):
            if (self.path / name).is_file():
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.path / name, destination / name)
        for student in self.students():
            (destination / student.path.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(student.metrics_file, destination / student.path.name / student.metrics_file.name)
        return RunDir(destination)

    # ---------------------------------------------------------------- the lock

    def in_use(self) -> str | None:
        """Who trains in this directory now ("process N on HOST, since ..."), or None when no live process holds
        its lock. Only looks: the lock is taken and released at once, and its file is not changed."""
        path = self.path / ".lock"
        if not path.is_file():
            return None
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def lock(self) -> "RunLock":
        """Held while a process trains in this directory; a second process gets one line naming the first.
        An flock dies with its process, so a crash never leaves a lock that blocks a later resume."""
        return RunLock(self.path / ".lock")


def fingerprint(mapping: dict) -> str:
    """sha256 of a recipe's content (key order, layout and comments aside)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(mapping, sort_keys=True, default=str).encode()).hexdigest()


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self) -> "RunLock":
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise KDError(f"run directory {self.path.parent} is in use by {holder}; wait for it to finish "
                          f"(or stop it), then resume") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"process {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the flock
            self.handle = None


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # the checkpoint was saved first: a resumed run rewrites this file from it
            raise WriteFailed(f"cannot write {self.path} ({err.strerror or err})", "the last checkpoint is kept: "
                              "free space or fix the folder, then resume the run (run_kd.py --resume RUN_DIR)") from None

    def replace(self, rows: list[dict]) -> None:
        """Make the file hold exactly `rows` (a resumed run restores what its checkpoint knew)."""
        if not rows:
            self.path.unlink(missing_ok=True)
            self.columns = None
            return
        self.columns = list(dict.fromkeys(k for row in rows for k in row))
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue().encode(), advice=RESUME_ADVICE)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))
