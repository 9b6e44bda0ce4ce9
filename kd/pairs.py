"""The registry of teacher/student pairs, read from teachers/pairs.yaml.

A pair names the teacher and student architectures, the data set, where the teacher checkpoint lives
and the recipe that trains it. It owns its checkpoint: where it is, whether it may be trained on demand,
and what to tell a user when it is missing. Paths in pairs.yaml are relative to the kd home (kd.home).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kd import home
from kd.errors import KDError
from kd.options import build
from kd.registry import nearest
from kd.yamlio import load_mapping


@dataclass
class Pair:
    teacher: str
    student: str
    dataset: str
    teacher_checkpoint: str = field(metadata={"help": "path of the teacher checkpoint, relative to the kd home"})
    teacher_recipe: str = field(metadata={"help": "recipe that trains the teacher"})
    train_on_demand: bool = field(default=False, metadata={"help": "train the teacher when it is missing (cheap pairs only)"})
    teacher_urls: list[str] = field(default_factory=list, metadata={"help": "where `run_kd.py teacher PAIR --download` fetches the published teacher, tried in order: the checkpoint file itself, or a tar archive (.tar, .tar.gz, .tgz) holding it at teacher_member"})
    teacher_member: str | None = field(default=None, metadata={"help": "path of the checkpoint inside the tar archives that teacher_urls point at (the URLs of checkpoint files give the file itself)"})
    teacher_sha256: dict[str, str] = field(default_factory=dict, metadata={"help": "sha256 of published files, by the file name their URL ends with: such a file is taken only with this digest, and `--download --from FILE` tells by it which published teacher a local copy is"})
    teacher_top1: dict[str, float] = field(default_factory=dict, metadata={"help": "test top-1 (%) that a published file's authors report, by file name (default: the benchmark's figure for the teacher architecture, results/published_cifar100.csv)"})
    teacher_weights: str | None = field(default=None, metadata={"help": "torchvision weights that `--download` takes the teacher from instead, e.g. ResNet34_Weights.IMAGENET1K_V1"})
    about: str = ""
    name: str = ""

    @property
    def checkpoint_path(self) -> Path:
        return home.home() / self.teacher_checkpoint

    @property
    def recipe_path(self) -> Path:
        return home.find(self.teacher_recipe)

    def owns(self, path: str | Path | None) -> bool:
        """Whether `path` is this pair's own teacher checkpoint (which kd may train, fetch or name)."""
        return path is not None and Path(path).expanduser().resolve() == self.checkpoint_path.resolve()

    def remake_hint(self) -> str:
        return f"make it again with `python run_kd.py teacher {self.name} --retrain`"

    @property
    def downloadable(self) -> bool:
        """Whether `run_kd.py teacher PAIR --download` can fetch a published teacher."""
        return bool(self.teacher_urls or self.teacher_weights)

    def missing_checkpoint(self) -> KDError:
        """The error for a run that needs this pair's teacher while its checkpoint is not there."""
        published = (f"download the published one with `python run_kd.py teacher {self.name} --download`, or train "
                     f"it with `python run_kd.py teacher {self.name}`" if self.downloadable else
                     f"make it with `python run_kd.py teacher {self.name}` (or put a published checkpoint there)")
        return KDError(f"teacher checkpoint {self.checkpoint_path} does not exist; {published}")


def all_pairs() -> dict[str, Pair]:
    pairs_file = home.find(home.PAIRS)
    if not pairs_file.is_file():
        import os

        where = (f"$KD_HOME is {os.environ['KD_HOME']}, which holds no {home.PAIRS}; point KD_HOME at a folder "
                 f"with {home.PAIRS} and recipes/ (a kd checkout), or unset it" if os.environ.get("KD_HOME") else
                 f"kd's home {home.home()} holds no {home.PAIRS} and no copy was packaged with kd; run kd from its "
                 f"checkout, or set KD_HOME to one")
        raise KDError(f"the pair registry {pairs_file} does not exist: {where}")
    data, lines = load_mapping(pairs_file, "pair registry")
    pairs = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise KDError(f"{pairs_file}:{lines.get(name, '?')}: pair '{name}' must be a mapping of teacher, student, ...")
        pairs[name] = build(Pair, entry, str(pairs_file), lines, f"{name}.")
        pairs[name].name = name
    return pairs


def get_pair(name: str) -> Pair:
    pairs = all_pairs()
    if name not in pairs:
        raise KDError(f"unknown pair '{name}'{nearest(name, pairs)}; valid names: {', '.join(pairs)}")
    return pairs[name]
