"""`log: [csv, tensorboard]`: every scalar of every epoch of every student in <run>/tensorboard/<student>/, equal to
metrics.csv; without the tensorboard package, one line before anything is written."""
import csv
import sys

import pytest

from kd.cli import main
from test_cli_run import small_recipe
from test_faults import one_line


def scalars(folder):
    """{tag: [(step, value), ...]} read back from a student's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_every_logged_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    recipe = small_recipe(tmp_path, methods="[vanilla, kd]", extra="log: [csv, tensorboard]\n")
    assert main([str(recipe), "epochs=2"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["kd-s0", "vanilla-s0"]
    for label, terms in (("vanilla-s0", ["loss_ce"]), ("kd-s0", ["loss_ce", "loss_kd"])):
        rows = list(csv.DictReader(open(run / label / "metrics.csv")))
        logged = scalars(run / "tensorboard" / label)
        expected = ["loss", *terms, "train_top1", "images_per_s", "seconds", "lr", "test_top1", "test_top5", "test_loss"]
        assert sorted(logged) == sorted(expected), label
        for tag in expected:  # event files store float32
            assert [s for s, _ in logged[tag]] == [1, 2], (label, tag)
            assert [v for _, v in logged[tag]] == pytest.approx([float(r[tag]) for r in rows], rel=1e-6), (label, tag)
    assert not (run / "kd-s0" / "tensorboard").exists()  # beside the students' folders, not in them


def test_csv_alone_writes_no_tensorboard_folder(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "vanilla-s0" / "metrics.csv").is_file() and not (run / "tensorboard").exists()


def test_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    recipe = small_recipe(tmp_path, methods="[vanilla, kd]")
    for name in ("tensorboard", "torch.utils.tensorboard"):  # as if not installed: `import` raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    assert main([str(recipe), "log=[csv, tensorboard]"]) == 2
    one_line(capsys, "log lists tensorboard, but the tensorboard package is not installed",
             "pip install 'kd[tensorboard]'", str(recipe))
    assert not (tmp_path / "runs").exists()
    assert main([str(recipe), "log=[csv, tb]"]) == 2
    one_line(capsys, "'log' must be a list of one of 'csv', 'tensorboard', got ['csv', 'tb']")
