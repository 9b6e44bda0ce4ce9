"""Teachers: making sure a run's teacher checkpoint exists before the run starts, and training the ones
a pair may train on demand. Building the teacher inside a run only loads it (kd.run.build_teacher)."""
from __future__ import annotations

from pathlib import Path

from kd.engine.checkpoint import read_checkpoint, save_atomic, state_dict_of
from kd.engine.distributed import barrier
from kd.errors import KDError
from kd.pairs import Pair, get_pair
from kd.recipe import Recipe, load_recipe, method_class
from kd.run import run_recipe


def ensure_teacher(recipe: Recipe, console=None, progress=None) -> None:
    """Train the recipe's teacher first when it is missing and its pair allows training on demand; otherwise
    leave a missing checkpoint to the run's own clear error. Call before run_recipe."""
    if not recipe.pair or not any(method_class(m).needs_teacher for m in recipe.methods):
        return
    pair = get_pair(recipe.pair)
    path = Path(recipe.teacher_checkpoint or "").expanduser()
    if recipe.teacher_checkpoint and not path.is_file() and pair.train_on_demand and pair.owns(path):
        train_teacher(pair, console=console, progress=progress)
        barrier()  # under torchrun, rank 0 writes the checkpoint the others then read


def train_teacher(pair: Pair, overrides: list[str] = (), console=None, progress=None) -> Path:
    """Train the pair's teacher with its recipe and store the final weights at the pair's checkpoint path."""
    recipe = load_recipe(pair.recipe_path, list(overrides))
    if recipe.student != pair.teacher or recipe.methods != ["vanilla"]:
        raise KDError(f"{pair.recipe_path}: a teacher recipe must train student: {pair.teacher} with methods: [vanilla]")
    say = console.print if console is not None else print
    say(f"training the teacher of pair '{pair.name}' ({pair.teacher}) with {pair.teacher_recipe}")
    result = run_recipe(recipe, console, progress)
    if not result.is_main:
        return pair.checkpoint_path
    student = result.run_dir.student("vanilla", recipe.seeds[0])
    state = read_checkpoint(student.last_checkpoint)
    top1 = result.rows[0]["last_top1"]
    save_atomic({"model": state_dict_of(state, student.last_checkpoint), "arch": pair.teacher, "test_top1": top1,
                 "recipe": str(pair.teacher_recipe), "run_dir": str(result.run_dir)}, pair.checkpoint_path)
    say(f"teacher saved to {pair.checkpoint_path} (test top-1 {top1:.2f}%)")
    return pair.checkpoint_path
