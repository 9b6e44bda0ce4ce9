"""CAM localisation scores and the CAM picture, computed from a run's saved checkpoints (no training).

Scores use each network's CAM of the ground-truth class on the test images of a data set with object
boxes (`shapes`): the share of the CAM's positive mass inside the box, and the pointing game (the CAM's
maximum falls inside the box). They are written to <run>/localisation.csv, one row per student and one
for the teacher.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from kd.cam import box_scores, caam, cam
from kd.engine.checkpoint import load_weights
from kd.engine.device import resolve_hardware
from kd.engine.rundir import RunDir
from kd.errors import KDError
from kd.models import create_model


class SavedRun:
    """A run directory's recipe, data set, teacher and final students, rebuilt for analysis."""

    def __init__(self, run_dir: Path):
        from kd.data import load_data

        self.run = RunDir.open(run_dir, "report")
        self.recipe = self.run.recipe()
        r = self.recipe
        self.data = load_data(r.dataset, r.data_options(), r.data_root, r.download, r.subset_per_class, r.val_split)
        self.hw = resolve_hardware("cpu" if not torch.cuda.is_available() else "auto", "fp32", False)
        self.teacher = None
        if r.teacher and r.teacher_checkpoint and Path(r.teacher_checkpoint).is_file():
            self.teacher = create_model(r.teacher, self.data.num_classes)
            load_weights(self.teacher, r.teacher_checkpoint, "teacher", r.teacher, self.data.num_classes)
            self.teacher.to(self.hw.device).eval()

    def students(self):
        """(label, seed, model) for every student with a final checkpoint, in the recipe's order."""
        for label in self.recipe.methods:
            for seed in self.recipe.seeds:
                path = self.run.student(label, seed).last_checkpoint
                if not path.is_file():
                    continue
                model = create_model(self.recipe.student, self.data.num_classes)
                load_weights(model, path, "student", self.recipe.student, self.data.num_classes)
                yield label, seed, model.to(self.hw.device).eval()

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        return normalised(images, self.data, self.hw.device)


def normalised(images: torch.Tensor, data, device) -> torch.Tensor:
    """uint8 test images, normalised as the networks saw them, on the analysis device."""
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    return ((images.float() / 255 - mean) / std).to(device)


@torch.inference_mode()
def maps_of(model, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(CAM of `classes`, CAAM) of a model, or None when its head gives no exact CAM."""
    if getattr(model, "cam_unavailable", None) or model.get_classifier() is None:
        return None
    out = model.forward_features(images)
    return cam(out.pre_pool, out.classifier.weight, classes), caam(out.pre_pool)


def localisation(run_dir: Path, batch: int = 500) -> pd.DataFrame | None:
    """Scores of the teacher and every student, written to <run>/localisation.csv; None without boxes. Each row
    names the checkpoint it was computed from (`checkpoint`: its sha256), so that a later report knows when the
    file is stale (localisation_cache). A model without an exact CAM gets a row without scores."""
    import io

    from kd.engine.checkpoint import write_atomic

    run = SavedRun(run_dir)
    test = run.data.test
    if test.boxes is None:
        return None
    digests = checkpoint_digests(run_dir)
    models = ([("teacher", 0, run.teacher)] if run.teacher is not None else []) + list(run.students())
    rows = []
    for label, seed, model in models:
        scores = box_localisation(model, run.data, run.hw.device, batch) or {"loc_energy": None, "loc_pointing": None}
        rows.append({"method": label, "seed": seed, **scores, "checkpoint": digests[(label, seed)]})
    table = pd.DataFrame(rows, columns=["method", "seed", "loc_energy", "loc_pointing", "checkpoint"])
    text = io.StringIO()
    table.to_csv(text, index=False)
    write_atomic(run.run.localisation_file, text.getvalue().encode())  # whole or not at all
    return table


def checkpoint_digests(run_dir: Path) -> dict[tuple[str, int], str]:
    """{(method, seed): sha256 of its checkpoint} for the models a localisation of the run scores now: the teacher
    (as ("teacher", 0), when its checkpoint is here) and every student with a last checkpoint."""
    from kd.data.archive import sha256

    run = RunDir(run_dir)
    recipe = run.recipe()
    digests = {}
    if recipe.teacher and recipe.teacher_checkpoint and Path(recipe.teacher_checkpoint).is_file():
        digests[("teacher", 0)] = sha256(Path(recipe.teacher_checkpoint))
    for label in recipe.methods:
        for seed in recipe.seeds:
            path = run.student(label, seed).last_checkpoint
            if path.is_file():
                digests[(label, seed)] = sha256(path)
    return digests


def localisation_cache(run_dir: Path) -> pd.DataFrame | None:
    """<run>/localisation.csv when it was computed from exactly the checkpoints the run holds now; None when it
    is missing, unreadable, empty, from another kd version, or stale (a checkpoint changed since: a report made
    mid-training, a resumed run), so that the caller computes the scores again."""
    saved = RunDir(run_dir).localisation_file
    if not saved.is_file():
        return None
    try:
        frame = pd.read_csv(saved)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError):
        return None
    if not {"method", "seed", "loc_energy", "loc_pointing", "checkpoint"} <= set(frame.columns):
        return None
    cached = {(str(m), int(s)): str(c) for m, s, c in zip(frame["method"], frame["seed"], frame["checkpoint"])}
    return frame if cached == checkpoint_digests(run_dir) else None


def box_localisation(model, data, device, batch: int = 500) -> dict | None:
    """{'loc_energy', 'loc_pointing'} (%) of the model's true-class CAM over the test images of `data`, which
    must have boxes; None when the model gives no exact CAM."""
    test = data.test
    energy, pointing = [], []
    for start in range(0, len(test), batch):
        classes = test.labels[start:start + batch].to(device)
        maps = maps_of(model, normalised(test.images[start:start + batch], data, device), classes)
        if maps is None:
            return None
        e, p = box_scores(maps[0], test.boxes[start:start + batch], test.image_size)
        energy.append(e.cpu())
        pointing.append(p.cpu())
    return {"loc_energy": 100 * torch.cat(energy).mean().item(), "loc_pointing": 100 * torch.cat(pointing).mean().item()}


def plot_cams(run_dir: Path, path: Path, count: int = 6) -> Path | None:
    """cams.png: test images (rows) with the teacher's CAM and each student's CAM and CAAM (seed of the
    first student of each method), all of the ground-truth class, min-max scaled and overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not has_student_checkpoints(run_dir):
        return None  # an archived run without its checkpoints: no picture (an existing one stays)
    run = SavedRun(run_dir)
    test = run.data.test
    # one image per class where possible, so the rows show different shapes
    picks = []
    for c in range(run.data.num_classes):
        hits = torch.nonzero(test.labels == c).flatten()
        if len(hits):
            picks.append(int(hits[0]))
    picks = picks[:count]
    pictures = test.images_at(torch.tensor(picks))
    images = run.normalised(pictures)
    classes = test.labels[picks].to(run.hw.device)
    columns = []
    if run.teacher is not None and maps_of(run.teacher, images, classes) is not None:
        teacher_cam, teacher_caam = maps_of(run.teacher, images, classes)
        columns += [("teacher CAM", teacher_cam), ("teacher CAAM", teacher_caam)]
    seen = set()
    for label, _, model in run.students():
        if label in seen:
            continue
        seen.add(label)
        maps = maps_of(model, images, classes)
        if maps is not None:
            columns += [(f"{label}\nCAM", maps[0]), (f"{label}\nCAAM", maps[1])]
    if not columns:
        return None
    size = tuple(pictures.shape[-2:])
    fig, axes = plt.subplots(len(picks), len(columns) + 1, figsize=(1.25 * (len(columns) + 1), 1.3 * len(picks) + 0.6),
                             squeeze=False)
    for row, index in enumerate(picks):
        picture = pictures[row].permute(1, 2, 0).numpy()
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(test.classes[int(test.labels[index])], fontsize=8)
        for col, (title, maps) in enumerate(columns, start=1):
            heat = torch.nn.functional.interpolate(maps[row][None, None].float(), size=size, mode="bilinear",
                                                   align_corners=False)[0, 0]
            heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-6)
            axes[row, col].imshow(picture)
            axes[row, col].imshow(heat.cpu().numpy(), cmap="jet", alpha=0.5)
            if row == 0:
                axes[row, col].set_title(title, fontsize=7)
        if test.boxes is not None:
            x0, y0, x1, y1 = test.boxes[index].tolist()
            for col in range(len(columns) + 1):
                axes[row, col].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                                       edgecolor="white", linewidth=0.8))
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    legend = "; white: object box" if test.boxes is not None else ""
    fig.suptitle(f"CAMs of the true class ({run.recipe.teacher} -> {run.recipe.student}){legend}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def has_student_checkpoints(run_dir) -> bool:
    return any(s.last_checkpoint.is_file() for s in RunDir(run_dir).students())


def localisation_columns(run_dirs) -> pd.DataFrame | None:
    """Mean localisation scores per method over the given runs (computing missing ones), or None."""
    frames = []
    for run_dir in run_dirs:
        if not has_student_checkpoints(run_dir):
            frame = archived_scores(run_dir)  # an archived run without its checkpoints: its scores as archived
        else:
            try:
                frame = localisation_cache(run_dir)
                if frame is None:
                    frame = localisation(run_dir)
            except KDError:
                frame = None  # e.g. the data set is not on this machine: the table is made without the scores
        if frame is not None and len(frame):
            frames.append(frame)
    if not frames:
        return None
    return pd.concat(frames).groupby("method", sort=False)[["loc_energy", "loc_pointing"]].mean().reset_index()


def archived_scores(run_dir: Path) -> pd.DataFrame | None:
    """The localisation.csv an archive kept (its checkpoints were left out, so it cannot be checked or redone)."""
    try:
        return pd.read_csv(RunDir(run_dir).localisation_file)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
