"""The registry of teacher/student pairs, read from teachers/pairs.yaml.

A pair names the teacher and student architectures, the data set, where the teacher checkpoint lives
and the recipe that trains it. Paths in pairs.yaml are relative to the repository root.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kd.config import build
from kd.errors import KDError
from kd.registry import nearest
from kd.yamlio import load_mapping

ROOT = Path(__file__).resolve().parents[1]
PAIRS_FILE = ROOT / "teachers" / "pairs.yaml"


@dataclass
class Pair:
    teacher: str
    student: str
    dataset: str
    teacher_checkpoint: str = field(metadata={"help": "path of the teacher checkpoint, relative to the repository"})
    teacher_recipe: str = field(metadata={"help": "recipe that trains the teacher"})
    train_on_demand: bool = field(default=False, metadata={"help": "train the teacher when it is missing (cheap pairs only)"})
    about: str = ""
    name: str = ""

    @property
    def checkpoint_path(self) -> Path:
        return ROOT / self.teacher_checkpoint

    @property
    def recipe_path(self) -> Path:
        return ROOT / self.teacher_recipe


def all_pairs() -> dict[str, Pair]:
    data, lines = load_mapping(PAIRS_FILE, "pair registry")
    pairs = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise KDError(f"{PAIRS_FILE}:{lines.get(name, '?')}: pair '{name}' must be a mapping of teacher, student, ...")
        pairs[name] = build(Pair, entry, str(PAIRS_FILE), lines, f"{name}.")
        pairs[name].name = name
    return pairs


def get_pair(name: str) -> Pair:
    pairs = all_pairs()
    if name not in pairs:
        raise KDError(f"unknown pair '{name}'{nearest(name, pairs)}; valid names: {', '.join(pairs)}")
    return pairs[name]
