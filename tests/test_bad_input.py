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
    torch.save(create_model("resnet14", 4), tmp_path / "module.pt")  # a whole pickled nn.Module
    broken = create_model("resnet14", 4).state_dict()
    broken["fc.weight"][0, 0] = float("nan")
    torch.save({"model": broken}, tmp_path / "nan.pt")
    (tmp_path / "duplicate.yaml").write_text("epochs: 2\nstudent: resnet8\nepochs: 3\n")
    (tmp_path / "utf16.yaml").write_bytes("student: resnet8\n".encode("utf-16"))
    (tmp_path / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "needs.py").write_text("import no_such_package_kd\n")
    (tmp_path / "taken.py").write_text("from kd.distillers import DISTILLERS, Distiller\n\n"
                                       "@DISTILLERS.register('kd')\nclass Mine(Distiller):\n    pass\n")
    (tmp_path / "done" / "kd-s0").mkdir(parents=True)  # a run directory to report on
    (tmp_path / "done" / "recipe.yaml").write_text("name: done\nmethods: [kd]\n")
    (tmp_path / "done" / "kd-s0" / "metrics.csv").write_text(
        "epoch,lr,loss,train_top1,images_per_s,seconds,test_top1,test_top5\n1,0.1,1.0,50,100,1,40,90\n")
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "cifar32" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / "cifar32" / split / c / "0.png")
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
    (["{t}/ok.yaml", "batch_size=0"], ["'batch_size' is 0, but it must be >= 2"]),
    (["{t}/ok.yaml", "batch_size=1"], ["'batch_size' is 1, but it must be >= 2 (batch normalisation cannot train"]),
    (["{t}/ok.yaml", "seeds=[100000000000000000000]"], ["'seeds' is 100000000000000000000, but it must be <= 2147483647"]),
    (["{t}/ok.yaml", "lr=.nan"], ["'lr' is nan, but it must be a finite number"]),
    (["{t}/ok.yaml", "lr=.inf"], ["'lr' is inf, but it must be a finite number"]),
    (["{t}/ok.yaml", "kd.T=.nan"], ["'kd.T' is nan, but it must be a finite number"]),
    (["{t}/ok.yaml", "lr=1e9"], ["'lr' is 1000000000.0, but it must be <= 100"]),
    (["{t}/ok.yaml", "ccm.cam_wieght=3"], ["unknown key 'ccm.cam_wieght'", "did you mean 'cam_weight'"]),
    (["{t}/ok.yaml", "methods=[kd@]"], ["method 'kd@': a variant needs a name after '@'"]),
    (["{t}/ok.yaml", "name=" + "x" * 300], ["cannot name a run directory"]),
    (["{t}/ok.yaml", "name=../escape"], ["cannot name a run directory", "no '/', no '..'"]),
    (["{t}/ok.yaml", "name=a/b"], ["cannot name a run directory", "no '/', no '..'"]),
    (["{t}/ok.yaml", "output_dir={t}/notckpt.pt"], ["output_dir", "notckpt.pt is a file, not a folder"]),
    (["{t}/ok.yaml", "output_dir={t}/notckpt.pt/below"], ["notckpt.pt is a file, not a folder"]),
    (["{t}/ok.yaml", "output_dir=/proc/kd-runs"], ["output_dir /proc/kd-runs is not writable"]),
    (["{t}/duplicate.yaml"], ["duplicate.yaml:3: key 'epochs' appears twice (lines 1 and 3); keep one"]),
    (["{t}/utf16.yaml"], ["utf16.yaml is not a UTF-8 text file"]),
    (["{t}/latin1.yaml"], ["latin1.yaml is not a UTF-8 text file"]),
    (["{t}/teacher4.pt"], ["teacher4.pt is not a UTF-8 text file", "not a checkpoint"]),
    (["{t}"], ["is a folder, not a file"]),
    (["{t}/ok.yaml", "imports=[{t}/syntax.py]"], ["imports entry", "syntax.py' has a syntax error at line 1"]),
    (["{t}/ok.yaml", "imports=[{t}/raises.py]"], ["raises.py' raised RuntimeError: no GPU here while being imported"]),
    (["{t}/ok.yaml", "imports=[{t}/needs.py]"], ["needs.py' needs the module 'no_such_package_kd'", "install it"]),
    (["{t}/ok.yaml", "imports=[{t}/taken.py]"], ["distiller 'kd' is already registered", "another name"]),
    (["{t}/ok.yaml", "imports=[no_such_module_kd]"], ["no module named 'no_such_module_kd'"]),
    (["{t}/ok.yaml", "dataset=imagefolder", "data_root={t}/notckpt.pt"], ["data_root", "is a file, not a folder"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}"], ["teacher checkpoint", "is a folder, not a file"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/module.pt"], ["holds a pickled Python object", "state_dict()"]),
    (["{t}/ok.yaml", "teacher_checkpoint={t}/nan.pt"], ["holds NaN or infinite values"]),
    (["report", "{t}/done", "--out", "{t}/notckpt.pt"], ["report --out", "that is a file"]),
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
    # no upper bound of its own: a float far outside any sensible range is refused before the first step
    (["{t}/ok.yaml", "kd.T=1e300"], ["'kd.T' is 1e+300, far outside any sensible range"]),
    (["{t}/ok.yaml", "eval_batch_size=1000000000000"], ["'eval_batch_size' is 1000000000000, but it must be <= 1000000"]),
    (["{t}/ok.yaml", "checkpoint_every=1000000000"], ["'checkpoint_every' is 1000000000, but it must be <= 100000"]),
    (["{t}/ok.yaml", "warmup_epochs=5"], ["warmup_epochs=5 is longer than the run (epochs=1)"]),
    (["{t}/ok.yaml", "methods=[kd@" + "x" * 300 + "]"], ["characters long", "use at most 100"]),
    (["{t}/ok.yaml", "imagefolder.image_sise=3"], ["unknown key 'imagefolder.image_sise'", "did you mean 'image_size'"]),
    (["--resume", "{t}/ok.yaml"], ["ok.yaml is a file, not a run directory"]),
    (["report", "{t}/ok.yaml"], ["report: ", "ok.yaml is a file, not a run directory"]),
    (["compare", "{t}/ok.yaml", "--resume", "{t}/done"], ["compare takes no --resume", "resumes an interrupted"]),
    (["{t}/ok.yaml", "dataset=cifar10", "data_root={t}/notckpt.pt"], ["cifar10: data_root", "is a file"]),
    # a model built for another input size fails at once, not deep inside timm after the run started
    (["{t}/ok.yaml", "student=timm:vit_tiny_patch16_224"],
     ["ok.yaml: the student 'timm:vit_tiny_patch16_224' cannot take the shapes images of 32x32",
      "it is built for 224x224 images", "set shapes: {image_size: 224} in the recipe"]),
    (["{t}/ok.yaml", "student=timm:vit_tiny_patch16_224", "methods=[vanilla]", "dataset=cifar10",
      "data_root={t}/cifar32"], ["the student 'timm:vit_tiny_patch16_224' cannot take the cifar10 images",
                                "(the cifar10 images have no other size)"]),
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
    assert not (workspace / "done" / "report").exists()


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


def test_a_kd_home_without_a_pair_registry_names_kd_home(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KD_HOME", str(tmp_path))
    for args in (["list", "pairs"], ["teacher", "quickstart"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"$KD_HOME is {tmp_path}, which holds no teachers/pairs.yaml" in err, err
        assert "run_kd.py list" not in err  # it would fail the same way
