"""Resume: a run killed with SIGKILL in the middle of an epoch continues from its last checkpoint and ends
exactly where an uninterrupted run ends; corrupt checkpoints are detected; results are never overwritten."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli, write_exploding_distiller
from test_cli_run import small_recipe

TIMING = {"images_per_s", "seconds"}


def rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(path))]


def start(recipe, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "run_kd.py"), str(recipe), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    recipe = small_recipe(tmp_path, shapes="{train_size: 1200, test_size: 64, num_classes: 4}")
    args = ["epochs=3", "batch_size=32"]
    whole = run_cli(str(recipe), *args, "output_dir=" + str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    reference = next((tmp_path / "whole").iterdir())

    process = start(recipe, *args, "output_dir=" + str(tmp_path / "cut"))
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline and process.poll() is None:
        found = list((tmp_path / "cut").glob("*/kd-s0/metrics.csv"))
        if found and len(list(csv.DictReader(open(found[0])))) >= 1:
            metrics = found[0]
            time.sleep(0.3)  # into the second epoch
            break
        time.sleep(0.02)
    assert metrics is not None and process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = metrics.parent.parent
    assert len(rows(metrics)) < 3
    resumed = run_cli("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for label in ("vanilla-s0", "kd-s0"):
        assert rows(run_dir / label / "metrics.csv") == rows(reference / label / "metrics.csv")
        ours = torch.load(run_dir / label / "checkpoints" / "last.pt", weights_only=True)["model"]
        theirs = torch.load(reference / label / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert len(list((tmp_path / "cut").iterdir())) == 1  # resumed in place, no second directory


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert run_cli(str(recipe), "epochs=2").returncode == 0
    run_dir = next((tmp_path / "runs").iterdir())
    last = run_dir / "vanilla-s0" / "checkpoints" / "last.pt"
    assert (last.parent / "last.pt.prev").is_file()
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    result = run_cli("--resume", str(run_dir), "epochs=3")
    assert result.returncode == 2 and "epochs: 2 in the run, 3 now" in result.stderr
    from kd.engine.rundir import RunDir
    student = RunDir(run_dir).student("vanilla", 0)
    state = student.last_state()
    assert state["epoch"] == 1  # the previous, good checkpoint
    (last.parent / "last.pt.prev").write_bytes(b"junk")
    with pytest.raises(Exception, match="not a readable torch checkpoint"):
        student.last_state()


def test_same_recipe_twice_makes_two_run_directories_and_a_bad_resume_is_refused(tmp_path):
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert run_cli(str(recipe)).returncode == 0
    assert run_cli(str(recipe)).returncode == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
    result = run_cli("--resume", str(tmp_path))
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_a_non_finite_loss_stops_the_run_naming_term_epoch_and_step(tmp_path):
    write_exploding_distiller(tmp_path, "exploding", nan_when="epoch == 1 and steps > 6")
    recipe = small_recipe(tmp_path, methods="[exploding]", extra="imports: [exploding.py]\n")
    result = run_cli(str(recipe), "epochs=3")  # 64 images / batch 16: 4 steps an epoch, NaN at epoch 2 step 3
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: exploding-s0: loss term 'boom' became NaN or infinite at epoch 2, step 3; the run stopped and its "
        "last good checkpoint is kept; lower the learning rate or that term's weight, or use precision: fp32")
    run_dir = next((tmp_path / "runs").iterdir())
    assert torch.load(run_dir / "exploding-s0" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert len(rows(run_dir / "exploding-s0" / "metrics.csv")) == 1


def test_a_resume_with_another_thread_count_says_it_will_not_be_exact(tmp_path):
    """Resumed at 1 thread, a run checkpointed at 2 differs from an uninterrupted one at rounding level: the
    checkpoints record what they were computed with, and a resume elsewhere says so in one warning."""
    recipe = small_recipe(tmp_path, methods="[vanilla, kd]")
    two = {**os.environ, "OMP_NUM_THREADS": "2"}
    env = {**two, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    done = subprocess.run([sys.executable, str(ROOT / "run_kd.py"), str(recipe), "epochs=2"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    state = torch.load(run_dir / "kd-s0" / "checkpoints" / "last.pt", weights_only=True)
    assert "2 threads" in state["machine"] and "torch " in state["machine"]

    def back_to_epoch_1_and_resume(threads):
        for label in ("vanilla-s0", "kd-s0"):
            checkpoints = run_dir / label / "checkpoints"
            (checkpoints / "last.pt").write_bytes((checkpoints / "last.pt.prev").read_bytes())
        return subprocess.run([sys.executable, str(ROOT / "run_kd.py"), "--resume", str(run_dir)],
                              env={**env, "OMP_NUM_THREADS": threads}, capture_output=True, text=True, timeout=600)

    same = back_to_epoch_1_and_resume("2")
    assert same.returncode == 0 and "warning: resuming on other hardware" not in same.stdout, same.stdout
    other = back_to_epoch_1_and_resume("1")
    assert other.returncode == 0, other.stderr
    out = " ".join(other.stdout.split())
    assert out.count("warning: resuming on other hardware") == 1, out
    assert "2 threads" in out and "now: " in out and "1 threads" in out, out


def test_a_run_a_live_process_trains_in_is_not_taken_for_an_interrupted_one(tmp_path):
    from kd.engine.rundir import RunDir

    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert run_cli(str(recipe), "epochs=1").returncode == 0
    run = RunDir(next((tmp_path / "runs").iterdir()))
    run.summary_file.unlink()  # as if it had stopped before its end
    recipe_yaml = run.recipe_file.read_text()
    assert RunDir.find_interrupted(tmp_path / "runs", "tiny", recipe_yaml).path == run.path
    assert run.in_use() is None
    with run.lock():  # a process training in it now
        assert "process " in run.in_use()
        assert RunDir.find_interrupted(tmp_path / "runs", "tiny", recipe_yaml) is None
    assert run.in_use() is None and RunDir.find_interrupted(tmp_path / "runs", "tiny", recipe_yaml).path == run.path


@pytest.mark.parametrize("edit", ["student: resnet8", "epochs: 1"])
def test_a_recipe_edited_by_hand_in_the_run_directory_is_refused_by_resume_and_report(tmp_path, edit):
    """Changing student: once crashed resume and report with a load_state_dict traceback; changing epochs or lr
    was silently ignored by the resumed schedule."""
    recipe = small_recipe(tmp_path, methods="[vanilla]")
    assert run_cli(str(recipe), "epochs=1").returncode == 0
    run_dir = next((tmp_path / "runs").iterdir())
    saved = run_dir / "recipe.yaml"
    saved.write_text(saved.read_text() + "# a comment changes nothing\n")
    assert run_cli("report", str(run_dir)).returncode == 0  # layout and comments are not the recipe
    key = edit.split(":")[0]
    new = {"student": "student: resnet14", "epochs": "epochs: 2"}[key]
    text = saved.read_text()
    assert edit in text
    saved.write_text(text.replace(edit, new))
    for args in (["--resume", str(run_dir)], ["report", str(run_dir)]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "recipe.yaml was changed after the run started" in lines[0], result.stderr


@pytest.mark.parametrize("how, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_and_sigterm_print_the_command_that_resumes(tmp_path, how, code, said):
    recipe = small_recipe(tmp_path, methods="[vanilla]", shapes="{train_size: 1200, test_size: 64, num_classes: 4}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "run_kd.py"), str(recipe), "epochs=50", "batch_size=32"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/vanilla-s0/metrics.csv")):
        time.sleep(0.05)
    process.send_signal(how)
    err = process.communicate(timeout=120)[1]
    run_dir = next((tmp_path / "runs").iterdir())
    assert process.returncode == code, err
    assert f"{said}; the finished epochs are kept in {run_dir}: resume with `python run_kd.py --resume {run_dir}`" in err
    assert "Traceback" not in err
