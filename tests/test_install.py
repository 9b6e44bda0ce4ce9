"""kd installed as a package (not editable, not from the checkout) works from any folder: the pair registry,
the recipes and the published numbers come with it."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT


def test_an_installed_kd_finds_its_pairs_and_recipes_from_another_folder(tmp_path):
    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:  # a clean copy of the repository: no build folders, no editable-install leftovers
        if (ROOT / name).is_file() and not name.startswith(("teachers/checkpoints/", "tests/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KD_HOME")}
    env.update(PYTHONPATH=str(target), HOME=str(tmp_path / "home"), COLUMNS="200")

    def kd(*args):
        return subprocess.run([sys.executable, "-m", "kd", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import kd; print(kd.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr  # not the checkout's kd
    pairs = kd("list", "pairs")
    assert pairs.returncode == 0, pairs.stderr
    assert "resnet32x4-resnet8x4" in pairs.stdout and "quickstart" in pairs.stdout
    recipes = kd("list", "recipes")
    assert "recipes/quickstart.yaml" in recipes.stdout and "recipes/cifar100/resnet56-resnet20/students.yaml" in recipes.stdout
    # a recipe of kd's own, by its path relative to the kd home, and a recipe of the user's, both run
    bad = kd("run", "recipes/quickstart.yaml", "epohcs=1")
    assert bad.returncode == 2 and "unknown key 'epohcs'" in bad.stderr and "quickstart.yaml" in bad.stderr
    (elsewhere / "mine.yaml").write_text("name: mine\nshapes: {train_size: 40, test_size: 20, num_classes: 4}\n"
                                         "student: resnet8\nepochs: 1\nbatch_size: 20\n")
    run = kd("run", "mine.yaml")
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((elsewhere / "runs").glob("mine-*/vanilla-s0/metrics.csv"))) == 1
    # the console script is installed too
    script = subprocess.run([str(target / "bin" / "kd"), "list", "distillers"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0 and "ccm" in script.stdout, script.stderr
