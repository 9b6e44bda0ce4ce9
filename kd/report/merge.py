"""Which run directories may merge into one table: runs of one recipe, whatever students each trained.

Shards of a comparison, and runs of the same recipe with other seeds or methods, differ only in what names or
places a run and in which students it trained; anything else (epochs, lr, the teacher, a method's options ...)
would mix different experiments in one row, so `report` refuses it, naming the keys.
"""
from __future__ import annotations

from kd.engine.rundir import RunDir
from kd.errors import KDError
from kd.recipe import default_of, is_section, shown_value

# name, output_dir and resume name or place a run; shard, methods and seeds choose its students; checkpoint_every
# and log change what is saved, not what is trained
MAY_DIFFER = ("name", "output_dir", "resume", "shard", "methods", "seeds", "checkpoint_every", "log")


def differences(a: dict, b: dict) -> list[str]:
    """The keys of two saved recipes that may not differ but do. A method's options section present in only one
    of them is no difference (that run did not train the method); present in both, it must match."""
    found = []
    for key in dict.fromkeys([*a, *b]):
        if key in MAY_DIFFER:
            continue
        if (key in a) != (key in b) and is_section(str(key)):
            continue
        if a.get(key, default_of(key)) != b.get(key, default_of(key)):
            found.append(key)
    return found


def check_mergeable(runs: list[RunDir]) -> None:
    """Refuse, in one line, run directories whose recipes differ in anything but MAY_DIFFER."""
    first = runs[0].recipe_mapping()
    for run in runs[1:]:
        other = run.recipe_mapping()
        keys = differences(first, other)
        if keys:
            shown = "; ".join(f"{k}: {shown_value(first, k)} in {runs[0]}, {shown_value(other, k)} in {run}"
                              for k in keys)
            raise KDError(f"report: cannot merge runs of different recipes: {', '.join(keys)} differ ({shown}); merge "
                          f"only runs of one recipe (they may differ in {', '.join(MAY_DIFFER)}), or report each "
                          f"run on its own")
