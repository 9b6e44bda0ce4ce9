"""compile_teacher: the teacher's passes alone compiled with frozen weights. Its auto rule compiles them on the
CPU only for runs long enough to repay the compile, and the compiled pass gives the eager pass's features."""
import shutil

import pytest
import torch

from conftest import run_cli
from kd.data.base import DataSpec
from kd.engine.device import resolve_hardware
from kd.recipe import recipe_from_mapping
from kd.run import COMPILE_TEACHER_MIN_PASSES, compile_teacher_passes
from test_cli_run import small_recipe

CPU = resolve_hardware("cpu", "fp32", None)


def recipe(**keys):
    return recipe_from_mapping({"pair": "quickstart", "methods": ["kd"], **keys}, "test")


def spec(train_size):
    return DataSpec(10, (32, 32), train_size)


def test_auto_stays_eager_without_a_cpp_compiler(monkeypatch):
    import kd.run

    monkeypatch.setattr(kd.run, "cpp_compiler", lambda: False)
    assert not compile_teacher_passes(recipe(epochs=240, batch_size=64), spec(50_000), CPU)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="auto compiles only with a C++ compiler")
def test_auto_compiles_the_teacher_only_for_long_runs_on_the_cpu():
    # the benchmark's 240 epochs of 50,000 images: 187,680 passes
    assert compile_teacher_passes(recipe(epochs=240, batch_size=64), spec(50_000), CPU)
    # the demo: 6 epochs of 4,000 images, 378 passes
    assert not compile_teacher_passes(recipe(epochs=6, batch_size=64), spec(4_000), CPU)
    # passes count per seed sharing one teacher pass, and per student when the teacher is not shared
    per_seed = COMPILE_TEACHER_MIN_PASSES // 2
    long_enough = recipe(epochs=per_seed, batch_size=64, seeds=[0, 1])
    assert compile_teacher_passes(long_enough, spec(64), CPU)
    assert not compile_teacher_passes(recipe(epochs=per_seed, batch_size=64, seeds=[0]), spec(64), CPU)
    assert compile_teacher_passes(recipe(epochs=per_seed, batch_size=64, methods=["kd", "at"], shared_teacher=False),
                                  spec(64), CPU)


def test_an_explicit_compile_teacher_wins_over_auto():
    assert not compile_teacher_passes(recipe(epochs=240, compile_teacher=False), spec(50_000), CPU)
    assert compile_teacher_passes(recipe(epochs=1, compile_teacher=True), spec(64), CPU)


def test_auto_leaves_the_teacher_eager_off_the_cpu():
    class Gpu:
        device = torch.device("cuda")

    assert not compile_teacher_passes(recipe(epochs=240, batch_size=64), spec(50_000), Gpu())


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on the CPU needs a C++ compiler")
def test_a_run_with_the_teacher_compiled_trains_and_says_so(tmp_path):
    result = run_cli(str(small_recipe(tmp_path, methods="[kd, ccm]")), "compile_teacher=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher passes with" in result.stdout and "compiled (torch.compile, frozen weights)" in result.stdout
    (run,) = list((tmp_path / "runs").iterdir())
    assert "compile_teacher: true" in (run / "recipe.yaml").read_text()


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on the CPU needs a C++ compiler")
def test_the_compiled_teacher_pass_gives_the_eager_passs_features():
    from kd.engine.trainer import teacher_pass
    from kd.models import create_model
    from kd.run import teacher_for_passes

    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval().requires_grad_(False)
    images = torch.randn(8, 3, 32, 32)
    eager = teacher_pass(teacher, images, CPU)
    passes = teacher_for_passes(teacher, recipe(epochs=1, compile_teacher=True), spec(64), CPU)
    assert passes is not teacher  # evaluation and the distillers keep the eager teacher
    compiled = teacher_pass(passes, images, CPU)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled.stages, eager.stages):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
