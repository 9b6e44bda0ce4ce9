"""Every kind of bad input gets one line (what, where, how to fix), exit code 2, no traceback, and leaves
nothing behind: no run directory, no teacher checkpoint."""
import pytest
import torch
from PIL import Image

from kd.cli import main
from kd.models import create_model


@pytest.fixture
def workspace(tmp_path):
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet14", 4).state_dict()}, tmp_path / "teacher4.pt")
    torch.save({"model": create_model("resnet14", 10).state_dict()}, tmp_path / "teacher10.pt")
    torch.save({"model": create_model("resnet20", 4).state_dict()}, tmp_path / "resnet20.pt")
    (tmp_path / "notckpt.pt").write_text("hello")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("student: [resnet8\n")
    for split, classes in (("train", ("a", "b")), ("test", ("a", "c"))):
        for c in classes:
            (tmp_path / "differ" / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "differ" / split / c / "0.png")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    (tmp_path / "ok.yaml").write_text(f"""name: ok
dataset: shapes
shapes: {{train_size: 32, test_size: 16, num_classes: 4}}
teacher: resnet14
teacher_checkpoint: {tmp_path / 'teacher4.pt'}
student: resnet8
methods: [kd]
epochs: 1
batch_size: 16
output_dir: {tmp_path / 'runs'}
""")
    return tmp_path


CASES = [
    # (arguments, pieces of the one line)
    (["{t}/missing.yaml"], ["missing.yaml does not exist"]),
    (["{t}/broken.yaml"], ["broken.yaml:2", "not valid YAML"]),
    (["{t}/list.yaml"], ["must be a YAML mapping"]),
    (["{t}/ok.yaml", "epohcs=3"], ["unknown key 'epohcs'", "did you mean 'epochs'"]),
    (["{t}/ok.yaml", "lr=-0.1"], ["'lr' is -0.1, but it must be > 0"]),
    (["{t}/ok.yaml", "epochs=-2"], ["'epochs' is -2, but it must be >= 1"]),
    (["{t}/ok.yaml", "kd.T=0"], ["'kd.T' is 0.0, but it must be > 0"]),
    (["{t}/ok.yaml", "batch_size=0"], ["'batch_size' is 0, but it must be >= 1"]),
    (["{t}/ok.yaml", "kd.kd_weight=lots"], ["'kd.kd_weight' must be a number, got 'lots'"]),
    (["{t}/ok.yaml", "student=resnet9"], ["unknown model 'resnet9'", "valid names"]),
    (["{t}/ok.yaml", "student=timm:resnet1888"], ["unknown timm model 'resnet1888'"]),
    (["{t}/ok.yaml", "dataset=cifar11"], ["unknown data set 'cifar11'", "did you mean 'cifar10'"]),
    (["{t}/ok.yaml", "methods=[kdd]"], ["unknown distiller 'kdd'", "did you mean 'kd'"]),
    (["{t}/ok.yaml", "pair=quickstrat"], ["unknown pair 'quickstrat'", "did you mean 'quickstart'"]),
    (["{t}/ok.yaml", "dataset=imagefolder", "data_root={t}/nowhere"], ["data_root", "nowhere does not exist"]),
    (["{t}/ok.yaml", "dataset=imagefolder", "data_root={t}/empty"], ["has no class folders"]),
    (["{t}/ok.yaml", "dataset=imagefolder", "data_root={t}/differ"], ["train and test class folders differ"]),
    (["{t}/ok.yaml", "dataset=cifar100", "data_root={t}"], ["cifar100 not found", "download: true"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/none.pt"], ["teacher checkpoint", "none.pt does not exist"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/notckpt.pt"], ["not a readable torch checkpoint"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/resnet20.pt"], ["does not fit the teacher architecture 'resnet14'"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/teacher10.pt"], ["trained for 10 classes, but the data set has 4"]),
    (["{t}/ok.yaml", "methods=[at]", "teacher=ResNet50", "teacher_checkpoint=null"], ["teacher_checkpoint"]),
    (["{t}/ok.yaml", "methods=[at]", "at.pairs=[[0, 7]]"], ["at.pairs: stage index 7 is out of range"]),
    (["{t}/ok.yaml", "methods=[fitnets]", "fitnets.student_stage=0", "fitnets.teacher_stage=2"],
     ["fitnets", "cannot be regressed onto"]),
    (["{t}/ok.yaml", "methods=[ccm]", "student=timm:mobilenetv3_small_100"],
     ["ccm needs an exact class activation map", "'timm:mobilenetv3_small_100'"]),
    (["{t}/ok.yaml", "epochs"], ["override 'epochs' does not parse"]),
    (["{t}/ok.yaml", "milestones=[1,"], ["not valid YAML"]),
    (["--resume", "{t}"], ["not a run directory"]),
    (["compare"], ["the following arguments are required: recipe"]),
    (["report", "{t}"], ["is not a run directory"]),
    (["teacher", "nopair"], ["unknown pair 'nopair'"]),
    (["bench", "quickstart", "--steps", "0"], ["--steps and --rounds must be at least 1"]),
]


@pytest.mark.parametrize("args, pieces", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input(workspace, capsys, args, pieces):
    code = main([a.format(t=workspace) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    assert not (workspace / "runs").exists()
    assert not list(workspace.glob("**/*.tmp"))


def test_debug_shows_the_traceback(workspace):
    from kd.errors import KDError

    with pytest.raises(KDError, match="unknown model"):
        main([str(workspace / "ok.yaml"), "student=resnet9", "--debug"])


def test_deterministic_runs_give_identical_metrics(workspace):
    import csv

    for out in ("a", "b"):
        assert main([str(workspace / "ok.yaml"), "deterministic=true", "epochs=2", f"output_dir={workspace / out}"]) == 0
    (a,), (b,) = list((workspace / "a").iterdir()), list((workspace / "b").iterdir())
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]  # noqa: E731
    assert strip(csv.DictReader(open(a / "kd-s0" / "metrics.csv"))) == strip(csv.DictReader(open(b / "kd-s0" / "metrics.csv")))
