"""bench/cifar100_protocol.py keeps the long CIFAR-100 run going over sittings: it starts or resumes the run, logs
each epoch that every student finished, and projects the time left from epochs measured within one sitting.
Tested on a tiny recipe (the shapes data set), never on the study itself."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import cifar100_protocol as protocol  # noqa: E402


@pytest.fixture
def study(tmp_path, monkeypatch):
    recipe = tmp_path / "students.yaml"
    recipe.write_text(f"name: proto-test\ndataset: shapes\nshapes: {{train_size: 64, test_size: 32}}\n"
                      f"student: resnet8\nmethods: [vanilla]\nepochs: 3\nbatch_size: 32\n"
                      f"output_dir: {tmp_path / 'out' / 'runs'}\n")
    out = tmp_path / "out"
    for name, value in (("RECIPE", str(recipe)), ("OUT", out), ("RUNS", out / "runs"),
                        ("PROGRESS", out / "progress.csv"), ("POLL_S", 0.05)):
        monkeypatch.setattr(protocol, name, value)
    monkeypatch.setattr(protocol, "teacher", lambda: None)
    return tmp_path


def test_a_run_is_started_logged_epoch_by_epoch_and_then_resumed_without_training_again(study):
    assert protocol.train() == 0
    rows = protocol.logged()
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert len({r["sitting"] for r in rows}) == 1 and all(r["finished_utc"].endswith("Z") for r in rows)
    text = protocol.status()
    assert "epochs done: 3 of 3 by every student (vanilla 3)" in text and "projected: the whole run" in text, text
    assert "latest test top-1: vanilla " in text and (study / "out" / "progress.md").read_text() == text
    run = protocol.current_run()
    assert run.parent == study / "out" / "runs"
    assert protocol.train() == 0  # the finished run is resumed: nothing to train, nothing logged twice
    assert protocol.current_run() == run and len(protocol.logged()) == 3


def test_the_pace_comes_only_from_consecutive_epochs_of_one_sitting(study):
    recipe = study / "students.yaml"
    recipe.write_text(recipe.read_text().replace("epochs: 3", "epochs: 10"))
    run = study / "out" / "runs" / "proto-test-20260101-000000" / "vanilla-s0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,test_top1\n" + "".join(f"{e},{10 + e}.0\n" for e in range(1, 6)))
    (study / "out" / "progress.csv").write_text(
        "epoch,finished_utc,sitting,machine\n1,,-,\n"  # finished while nothing watched
        "2,2026-01-01T00:00:00Z,a,m\n3,2026-01-01T00:02:00Z,a,m\n4,2026-01-01T00:04:00Z,a,m\n"
        "5,2026-01-02T09:00:00Z,b,m\n")  # another sitting: the gap since epoch 4 is no epoch's time
    text = protocol.status()
    assert "median 2.00 min over the last 2 epochs" in text, text
    assert "the whole run 0.3 h" in text and "0.2 h of running left" in text, text  # 10 and 5 epochs x 2 min
    assert "epochs done: 5 of 10" in text
    assert "latest test top-1: vanilla 15.00 (epoch 5)" in text


def test_commit_takes_the_study_folder_only_and_says_how_far_it_got(study, monkeypatch):
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=study, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@t"), git("config", "user.name", "t")
    (study / "elsewhere.txt").write_text("staged, not the study's\n")
    git("add", "elsewhere.txt")
    assert protocol.train() == 0
    monkeypatch.setattr(protocol, "ROOT", study)  # git runs in the study's repository
    message = protocol.commit_state()
    assert message == "CIFAR-100 protocol run: state at epoch 3 of 3 (0.0 h of running left)", message
    committed = git("show", "--name-only", "--format=%s", "HEAD")
    assert "progress.csv" in committed and "progress.md" in committed and "vanilla-s0/metrics.csv" in committed
    assert "checkpoints/last.pt" in committed and "elsewhere.txt" not in committed, committed
    assert "elsewhere.txt" in git("diff", "--cached", "--name-only")  # still staged, left as it was
