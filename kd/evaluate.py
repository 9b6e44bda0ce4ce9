"""`run_kd.py evaluate`: test top-1, top-5 and loss of saved checkpoints, and the CAM localisation scores where the
data set has object boxes, without training.

It takes
- a run directory: every student's last checkpoint, with the run's recipe (data set and its options, data_root,
  student architecture, precision), so the numbers reproduce the last rows of metrics.csv;
- one checkpoint file: one kd wrote (best.pt / last.pt name their architecture; inside a run directory they also
  take its data set), a pair's teacher checkpoint (the pair names architecture and data set), the benchmark's
  format ({"model": state_dict}) or a bare state dict (both need --arch, and --data where no run or pair says).
Files are evaluated in fp32. Everything that can fail on bad input fails before the first model is evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kd.data import DATASETS, load_data
from kd.engine.checkpoint import load_state, read_checkpoint, state_dict_of
from kd.engine.device import resolve_hardware
from kd.engine.evaluation import evaluate
from kd.engine.rundir import RunDir
from kd.errors import KDError
from kd.models import create_model
from kd.options import build
from kd.pairs import all_pairs
from kd.recipe import Recipe, load_recipe
from kd.report.cams import box_localisation

FORMATS = ("a run directory, a checkpoint kd wrote (best.pt, last.pt), the benchmark's {'model': state_dict} "
           "or a bare state dict")


@dataclass
class Subject:
    """One model to evaluate: its name in the table, the file, the architecture and the weights."""

    name: str
    path: Path
    arch: str
    state: dict
    epoch: int | None
    role: str = "model"


@dataclass
class Setting:
    """The data set and how to run the models on it."""

    dataset: str
    options: object
    root: str | None
    precision: str = "fp32"
    channels_last: bool | None = None
    batch_size: int = 512
    fix: str = "give the right --arch"


def plan(target: str, data: str | None = None, data_root: str | None = None,
         arch: str | None = None) -> tuple[list[Subject], Setting]:
    """What `evaluate TARGET` evaluates and on which data, or one line saying what is missing."""
    path = Path(target).expanduser()
    if path.is_dir():
        return plan_run(RunDir.open(path, "evaluate"), data, data_root, arch)
    return plan_file(path, data, data_root, arch)


def plan_run(run: RunDir, data, data_root, arch) -> tuple[list[Subject], Setting]:
    recipe = run.recipe()
    if arch is not None and arch != recipe.student:
        raise KDError(f"evaluate: {run} trained {recipe.student} students (its recipe says so); drop --arch {arch}")
    subjects = []
    for student in run.students():
        if student.last_checkpoint.is_file():
            obj = read_checkpoint(student.last_checkpoint, "student checkpoint")
            subjects.append(Subject(student.path.name, student.last_checkpoint, recipe.student,
                                    state_dict_of(obj, student.last_checkpoint), epoch_of(obj), "student"))
    if not subjects:
        raise KDError(f"evaluate: {run} holds no student checkpoint (<method>-s<seed>/checkpoints/last.pt); train "
                      f"it first, or resume it (run_kd.py --resume {run})")
    setting = data_setting(data or recipe.dataset, data_root, recipe)
    setting.precision, setting.channels_last = recipe.precision, recipe.channels_last  # as the run evaluated
    setting.batch_size, setting.fix = recipe.eval_batch_size, "evaluate it with the run's own recipe"
    return subjects, setting


def plan_file(path: Path, data, data_root, arch) -> tuple[list[Subject], Setting]:
    obj = read_checkpoint(path, "checkpoint")
    try:
        state = state_dict_of(obj, path)
    except KDError as err:
        raise KDError(f"evaluate: {err}; evaluate takes {FORMATS}") from None
    own = obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), str) else None
    if arch and own and arch != own:
        raise KDError(f"evaluate: {path} holds a {own} (it says so), not a {arch}; drop --arch")
    found = RunDir.holding(path)
    recipe = found[0].recipe() if found else None
    pair = next((p for p in all_pairs().values() if p.owns(path)), None)
    arch = arch or own or (recipe.student if recipe else None) or (pair.teacher if pair else None)
    if arch is None:
        kind = "the benchmark's format ({'model': state_dict})" if isinstance(obj, dict) and "model" in obj \
            else "a bare state dict"
        raise KDError(f"evaluate: {path} is {kind}, which does not say which architecture it holds; give --arch "
                      f"NAME (run_kd.py list models shows them), e.g. --arch resnet8")
    if recipe is None and pair is not None:
        recipe = load_recipe(pair.recipe_path)  # the teacher's recipe: its data_root and data-set options
    dataset = data or (recipe.dataset if recipe else None) or (pair.dataset if pair else None)
    if dataset is None:
        raise KDError(f"evaluate: which data set is {path} for? give --data NAME (run_kd.py list datasets), and "
                      f"--data-root PATH unless it is shapes")
    name = f"{found[1].path.name}/{path.name}" if found else path.name
    return [Subject(name, path, arch, state, epoch_of(obj))], data_setting(dataset, data_root, recipe)


def data_setting(dataset: str, data_root: str | None, recipe: Recipe | None) -> Setting:
    """The data set with the recipe's options and data_root when the recipe used the same one, else defaults."""
    same = recipe is not None and recipe.dataset == dataset
    options = recipe.data_options() if same else build(DATASETS.get(dataset).Options, None, "--data")
    return Setting(dataset, options, data_root or (recipe.data_root if same else None))


def epoch_of(obj) -> int | None:
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return epoch if isinstance(epoch, int) else None


def run_evaluation(subjects: list[Subject], setting: Setting, console=None, progress=None, data=None) -> list[dict]:
    """One row per subject: test top-1, top-5 (%), loss, and loc_energy / loc_pointing (%) where there are boxes.
    `data`: the setting's data set, when the caller has loaded it already."""
    data = data if data is not None else load_data(setting.dataset, setting.options, setting.root)
    try:
        hw = resolve_hardware("auto", setting.precision, setting.channels_last)
    except KDError:  # the run's precision does not exist here (fp16 on a CPU): evaluate in fp32
        hw = resolve_hardware("auto", "fp32", setting.channels_last)
    models = []
    for s in subjects:  # every checkpoint is checked against the data before the first is evaluated
        model = create_model(s.arch, data.num_classes)
        load_state(model, s.state, s.path, s.role, s.arch, data.num_classes, setting.fix)
        models.append(model.to(hw.device, memory_format=hw.memory_format).eval())
    if console is not None:
        console.print(f"{setting.dataset}: {len(data.test)} test images, {data.num_classes} classes ({hw.describe()})")
    boxes = getattr(data.test, "boxes", None) is not None
    rows = []
    for s, model in zip(subjects, models):
        loader = data.loader("test", setting.batch_size, hw.device, 0, 0, 1, hw.channels_last)
        row = {"model": s.name, "arch": s.arch, "epoch": s.epoch, "dataset": setting.dataset,
               **evaluate(model, tracked(loader, progress, f"evaluating {s.name}"), hw)}
        if boxes:
            row.update(box_localisation(model, data, hw.device) or {"loc_energy": None, "loc_pointing": None})
        rows.append(row)
    return rows


def tracked(loader, progress, description: str):
    """The loader's batches, advancing a progress bar."""
    if progress is None:
        yield from loader
        return
    task = progress.add_task(description, total=len(loader))
    for batch in loader:
        yield batch
        progress.advance(task)
    progress.remove_task(task)


def rows_csv(rows: list[dict]) -> bytes:
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()
