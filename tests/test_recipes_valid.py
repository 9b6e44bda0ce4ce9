"""Every recipe in recipes/ loads and validates (no training), so none can rot."""
from pathlib import Path

import pytest

from conftest import ROOT
from kd.recipe import load_recipe

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates(path: Path):
    recipe = load_recipe(path)
    for label in recipe.methods:
        recipe.method_options(label)
    recipe.data_options()
    assert recipe.student


def test_the_benchmark_schedules_are_standard():
    cifar = [load_recipe(p) for p in RECIPES if "cifar100" in p.parts]
    assert len(cifar) == 26  # 13 pairs x (teacher, students)
    for recipe in cifar:
        assert (recipe.epochs, recipe.batch_size, recipe.milestones, recipe.weight_decay) == (240, 64, [150, 180, 210], 5e-4)
        small = recipe.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
        assert recipe.lr == (0.01 if small else 0.05)
    imagenet = [load_recipe(p) for p in RECIPES if "imagenet" in p.parts]
    for recipe in imagenet:
        assert (recipe.epochs, recipe.lr, recipe.lr_batch, recipe.milestones) == (100, 0.1, 256, [30, 60, 90])
