"""Faults while running: broken images found mid-way, hidden folders, a full disk, a kill between checkpoints, two
resumes at once, damaged metrics files. Each ends in one clear line and leaves a run that can be resumed (or no
run at all), or simply works."""
import csv
import errno
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, run_cli
from kd.cli import main
from kd.engine.rundir import RunDir
from test_cli_run import small_recipe
from test_data_sets import make_folder
from test_streaming import noisy_folder, streamed_recipe

STRIP = ("images_per_s", "seconds")


def rows(path):
    return [{k: v for k, v in r.items() if k not in STRIP} for r in csv.DictReader(open(path))]


def one_line(capsys, *pieces):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for piece in pieces:
        assert piece in err[0], (piece, err[0])
    assert "Traceback" not in err[0]
    return err[0]


def folder_recipe(tmp_path, root):
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(f"name: folder\ndataset: imagefolder\ndata_root: {root}\nimagefolder: {{image_size: 16}}\n"
                      f"student: resnet8\nepochs: 1\nbatch_size: 4\noutput_dir: {tmp_path / 'runs'}\n")
    return recipe


def test_a_truncated_first_image_is_named_in_one_line(tmp_path, capsys):
    root = make_folder(tmp_path / "data", per_class=3, size=16)
    first = sorted((root / "train" / "cat").iterdir())[0]
    Image.new("RGB", (16, 16)).save(first.with_suffix(".jpg"))
    first.unlink()
    jpg = first.with_suffix(".jpg")
    jpg.write_bytes(jpg.read_bytes()[:40])  # the image the size estimate opens first
    # without image_size, kd reads the first file's size to estimate the decoded set's memory
    assert main([str(folder_recipe(tmp_path, root)), "imagefolder.image_size=null"]) == 2
    one_line(capsys, f"cannot decode image {jpg}", "remove or replace the file")
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_image_in_a_streamed_folder_is_named_in_one_line_and_leaves_no_run(tmp_path):
    root = noisy_folder(tmp_path / "data", per_class=8)
    bad = sorted((root / "train" / "dog").iterdir())[3]
    bad.write_bytes(b"\x89PNG not really")
    result = run_cli(str(streamed_recipe(tmp_path, root)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot decode image {bad}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "worker" not in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    root = make_folder(tmp_path / "data", per_class=4, size=16)
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (16, 16)).save(root / split / ".ipynb_checkpoints" / "x.png")
        Image.new("RGB", (16, 16)).save(root / split / "cat" / ".hidden.png")
        (root / split / "dog" / ".DS_Store").mkdir()
    assert main([str(folder_recipe(tmp_path, root))]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    assert RunDir(run).summary_rows()[0]["method"] == "vanilla"
    from kd.data import load_data
    from kd.data.folder import FolderOptions

    data = load_data("imagefolder", FolderOptions(image_size=16), str(root))
    assert data.train.classes == ["cat", "dog"] and len(data.train) == 8


class FullDisk:
    """open() for kd.engine.checkpoint that fails like a full disk when writing `name` the `nth` time."""

    def __init__(self, name, nth):
        self.name, self.nth, self.seen = name, nth, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if os.path.basename(path) == self.name and "w" in mode:
            self.seen += 1
            if self.seen == self.nth:
                handle.write(b"x" * 1000)  # half a file, then the disk is full
                handle.close()
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return handle


def test_a_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    import kd.engine.checkpoint as checkpoint

    recipe = small_recipe(tmp_path, methods="[vanilla]")
    monkeypatch.setattr(checkpoint, "open", FullDisk("last.pt.tmp", nth=2), raising=False)
    assert main([str(recipe), "epochs=3"]) == 2
    line = one_line(capsys, "no space left on the disk of", "last.pt", "KiB needed", "resume the run")
    (run,) = list((tmp_path / "runs").iterdir())
    student = RunDir(run).student("vanilla", 0)
    assert torch.load(student.last_checkpoint, weights_only=True)["epoch"] == 1, line
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(["--resume", str(run)]) == 0
    assert [r["epoch"] for r in rows(student.metrics_file)] == ["1", "2", "3"]


def test_a_full_disk_before_any_epoch_was_kept_removes_the_run_and_says_to_start_again(tmp_path, capsys, monkeypatch):
    import kd.engine.checkpoint as checkpoint

    recipe = small_recipe(tmp_path, methods="[vanilla]")
    for name in ("recipe.yaml.tmp", "last.pt.tmp"):  # the first file of a run, the first checkpoint of epoch 1
        monkeypatch.setattr(checkpoint, "open", FullDisk(name, nth=1), raising=False)
        assert main([str(recipe), "epochs=2"]) == 2
        line = one_line(capsys, "no space left on the disk of", name.removesuffix(".tmp"), "start the run again")
        assert "resume" not in line
        assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert "KiB needed" in line or "MiB needed" in line  # a size in a unit that shows it, never "0.0 MiB"


def test_an_unwritable_output_dir_is_refused_before_a_teacher_is_trained(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "recipes").mkdir()
    (home / "teachers" / "pairs.yaml").write_text(
        "tiny:\n  teacher: resnet14\n  student: resnet8\n  dataset: shapes\n  train_on_demand: true\n"
        "  teacher_checkpoint: teachers/tiny.pt\n  teacher_recipe: recipes/tiny-teacher.yaml\n")
    (home / "recipes" / "tiny-teacher.yaml").write_text(
        "student: resnet14\nmethods: [vanilla]\nshapes: {train_size: 32, test_size: 16}\nepochs: 1\n")
    (tmp_path / "file").write_text("x")
    (home / "students.yaml").write_text(f"pair: tiny\nmethods: [kd]\nshapes: {{train_size: 32, test_size: 16}}\n"
                                        f"epochs: 1\noutput_dir: {tmp_path / 'file' / 'runs'}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KD_HOME": str(home)}
    result = subprocess.run([sys.executable, str(ROOT / "run_kd.py"), str(home / "students.yaml")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "is a file, not a folder" in result.stderr
    assert "training the teacher" not in result.stdout and not (home / "teachers" / "tiny.pt").exists()


def test_a_full_disk_while_rewriting_metrics_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import kd.engine.checkpoint as checkpoint

    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe), "epochs=2"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    student = RunDir(run).student("vanilla", 0)
    (student.last_checkpoint.parent / "last.pt.prev").replace(student.last_checkpoint)  # as if stopped after epoch 1
    (run / "summary.csv").unlink()
    monkeypatch.setattr(checkpoint, "open", FullDisk("metrics.csv.tmp", nth=1), raising=False)
    assert main(["--resume", str(run)]) == 2
    one_line(capsys, "no space left on the disk of", "metrics.csv")
    assert not list(run.rglob("*.tmp")) and student.metrics_file.stat().st_size > 0


def test_a_kill_between_checkpoints_does_not_repeat_epochs_on_resume(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla]", extra="checkpoint_every: 2\n")
    assert main([str(recipe), "epochs=3"]) == 0
    (whole,) = list((tmp_path / "runs").iterdir())
    cut = tmp_path / "cut"
    import shutil

    shutil.copytree(whole, cut)
    student = RunDir(cut).student("vanilla", 0)
    shutil.rmtree(student.last_checkpoint.parent)  # killed after epoch 1: its row is written, no checkpoint yet
    student.metrics_file.write_text("".join(open(student.metrics_file).readlines()[:2]))
    (cut / "summary.csv").unlink()
    assert main(["--resume", str(cut)]) == 0
    assert rows(student.metrics_file) == rows(RunDir(whole).student("vanilla", 0).metrics_file)


def test_a_second_resume_of_a_run_in_use_is_refused_and_a_stale_lock_does_not_block(tmp_path, capsys):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe), "epochs=1"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    (run / "summary.csv").unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate(); f.write('process 4242 on testhost'); f.flush(); "
                               "print('held', flush=True); time.sleep(60)", str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["--resume", str(run)]) == 2
        one_line(capsys, f"run directory {run} is in use by process 4242 on testhost", "wait for it")
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()  # left behind by the killed holder: stale, and it must not block
    assert main(["--resume", str(run)]) == 0


def test_resume_with_changes_says_what_differs_and_what_to_do(tmp_path, capsys):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe), "epochs=1"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    capsys.readouterr()
    for args in (["--resume", str(run), "epochs=5"], [str(recipe), "--resume", str(run), "epochs=5"]):
        assert main(args) == 2
        one_line(capsys, "epochs: 1 in the run, 5 now", "--resume takes no changes", "as a new run")


def test_a_loss_that_fails_in_the_first_epoch_leaves_no_run_directory(tmp_path, capsys):
    from conftest import write_exploding_distiller

    write_exploding_distiller(tmp_path, "early", nan_when="steps == 2")
    recipe = small_recipe(tmp_path, methods="[early]", extra="imports: [early.py]\n")
    assert main([str(recipe)]) == 2
    one_line(capsys, "became NaN or infinite at epoch 1, step 2", "no checkpoint had been written yet")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("damage, piece", [
    ("", "metrics.csv is empty"),
    ('epoch,lr,test_top1\n1,"0.1,40\n', "is not a readable metrics file"),
    ("a,b,c\n1,2,3\n", "is not a kd metrics file: it has no epoch, train_top1, test_top1"),
    ("epoch,lr,loss,train_top1,images_per_s,seconds,test_top1,test_top5\n1,0.1,1.0,50,100,1,40,90\n2,0.1,0.9,5",
     "line 3 is incomplete"),
    ("epoch,lr,loss,train_top1,images_per_s,seconds,test_top1,test_top5\n1,0.1,1.0,50,100,1,nan,90\n",
     "line 2 has no number in column test_top1"),
])
def test_report_on_a_damaged_metrics_file_says_which_and_how_to_mend(tmp_path, capsys, damage, piece):
    run = tmp_path / "run"
    (run / "kd-s0").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: run\nmethods: [kd]\n")
    (run / "kd-s0" / "metrics.csv").write_text(damage)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    one_line(capsys, piece, "--resume")


def test_a_truncated_teacher_of_a_pair_says_how_to_train_it_again(tmp_path):
    home = tmp_path / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "teachers" / "pairs.yaml").write_text(
        "tiny:\n  teacher: resnet14\n  student: resnet8\n  dataset: shapes\n"
        "  teacher_checkpoint: teachers/tiny.pt\n  teacher_recipe: recipes/tiny-teacher.yaml\n")
    (home / "teachers" / "tiny.pt").write_bytes(b"PK\x03\x04 cut short")
    (home / "students.yaml").write_text(f"pair: tiny\nmethods: [kd]\nshapes: {{train_size: 32, test_size: 16}}\n"
                                        f"epochs: 1\noutput_dir: {tmp_path / 'runs'}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KD_HOME": str(home)}
    result = subprocess.run([sys.executable, str(ROOT / "run_kd.py"), str(home / "students.yaml")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "is not a readable torch checkpoint" in result.stderr
    assert "make it again with `python run_kd.py teacher tiny --retrain`" in result.stderr
    result = subprocess.run([sys.executable, str(ROOT / "run_kd.py"), "teacher", "tiny"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not a readable torch checkpoint" in result.stderr
    assert "make it again with `python run_kd.py teacher tiny --retrain`" in result.stderr


def test_report_skips_a_student_whose_metrics_hold_only_the_header(tmp_path, capsys):
    run = tmp_path / "run"
    for student, body in (("kd-s0", "1,0.1,1.0,50,100,1,40,90\n"), ("vanilla-s0", "")):
        (run / student).mkdir(parents=True)
        (run / student / "metrics.csv").write_text(
            "epoch,lr,loss,train_top1,images_per_s,seconds,test_top1,test_top5\n" + body)
    (run / "recipe.yaml").write_text("name: run\nmethods: [kd, vanilla]\n")
    from kd.report.tables import load_metrics

    assert load_metrics([run])["method"].tolist() == ["kd"]


def test_an_evaluation_that_diverges_is_said(tmp_path, capsys, monkeypatch):
    """The NaN guard watches the training terms; a student whose evaluated loss is not finite is named too."""
    import kd.engine.trainer as trainer

    real = trainer.evaluate

    def exploding(model, loader, hw, prefix="test"):
        return {**real(model, loader, hw, prefix), f"{prefix}_loss": float("nan")}

    monkeypatch.setattr(trainer, "evaluate", exploding)
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe), "epochs=1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: vanilla-s0 epoch 1: the evaluation gives a non-finite test_loss (nan)" in out, out


def test_a_folder_of_1x1_images_trains_with_a_warning_that_names_their_size(tmp_path, capsys):
    make_folder(tmp_path / "tiny", size=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: imagefolder\ndata_root: {tmp_path / 'tiny'}\nstudent: resnet8\nmethods: [vanilla]\n"
                      f"epochs: 1\nbatch_size: 3\nlr: 0.001\nprecision: fp32\noutput_dir: {tmp_path / 'runs'}\n")
    assert main([str(recipe)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: the imagefolder images are 1x1 pixels" in out and "imagefolder: {image_size: 32}" in out, out


def test_a_full_disk_while_writing_a_report_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, capsys, monkeypatch):
    import kd.report.write as write

    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert main([str(recipe), "epochs=1"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    out = tmp_path / "report"
    out.mkdir()
    (out / "table.md").write_text("an earlier report\n")

    def full(*args, **kwargs):  # matplotlib's savefig on a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "curves.png"))

    monkeypatch.setattr(write, "plot_curves", full)
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out)]) == 2
    one_line(capsys, f"cannot write the report into {out} (No space left on device); nothing there was changed")
    assert sorted(p.name for p in out.iterdir()) == ["table.md"] and (out / "table.md").read_text() == "an earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    monkeypatch.undo()
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert {"table.md", "table.csv", "curves.png"} <= {p.name for p in out.iterdir()}
