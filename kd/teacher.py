"""Teacher checkpoints: where they are, and training the ones a pair may train on demand."""
from __future__ import annotations

from pathlib import Path

from kd.engine.checkpoint import read_checkpoint, save_atomic, state_dict_of
from kd.errors import KDError
from kd.pairs import Pair, get_pair


def teacher_checkpoint(recipe, console=None, progress=None) -> Path:
    """The teacher checkpoint the recipe needs; trains it first when its pair allows that."""
    if recipe.teacher_checkpoint is None:
        raise KDError(f"{recipe.source or 'recipe'}: no teacher_checkpoint for teacher '{recipe.teacher}'; "
                      f"set teacher_checkpoint, or use a pair (run_kd.py list pairs)")
    path = Path(recipe.teacher_checkpoint).expanduser()
    if path.is_file():
        return path
    if recipe.pair:
        pair = get_pair(recipe.pair)
        if path.resolve() == pair.checkpoint_path.resolve():
            if pair.train_on_demand:
                from kd.engine.distributed import barrier

                train_teacher(pair, console=console, progress=progress)
                barrier()  # under torchrun, rank 0 writes the checkpoint the others then read
                return path
            raise KDError(f"teacher checkpoint {path} does not exist; make it with "
                          f"`python run_kd.py teacher {pair.name}` (or put a published checkpoint there)")
    raise KDError(f"teacher checkpoint {path} does not exist; check teacher_checkpoint in the recipe")


def train_teacher(pair: Pair, overrides: list[str] = (), console=None, progress=None) -> Path:
    """Train the pair's teacher with its recipe and store the final weights at the pair's checkpoint path."""
    from kd.recipe import load_recipe
    from kd.run import run_recipe

    recipe = load_recipe(pair.recipe_path, list(overrides))
    if recipe.student != pair.teacher or recipe.methods != ["vanilla"]:
        raise KDError(f"{pair.recipe_path}: a teacher recipe must train student: {pair.teacher} with methods: [vanilla]")
    say = console.print if console is not None else print
    say(f"training the teacher of pair '{pair.name}' ({pair.teacher}) with {pair.teacher_recipe}")
    result = run_recipe(recipe, console, progress)
    from kd.engine.distributed import init_distributed

    if not init_distributed(recipe.device).is_main:
        return pair.checkpoint_path
    seed = recipe.seeds[0]
    last = result.run_dir / f"vanilla-s{seed}" / "checkpoints" / "last.pt"
    state = read_checkpoint(last)
    top1 = result.rows[0]["last_top1"]
    save_atomic({"model": state_dict_of(state, last), "arch": pair.teacher, "test_top1": top1,
                 "recipe": str(pair.teacher_recipe), "run_dir": str(result.run_dir)}, pair.checkpoint_path)
    say(f"teacher saved to {pair.checkpoint_path} (test top-1 {top1:.2f}%)")
    return pair.checkpoint_path
