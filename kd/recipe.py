"""Recipes: a short flat YAML file -> a validated `Recipe`.

Top-level keys are the fields of `Recipe`. A key named after a distiller or a data set holds that
component's options, e.g. `kd: {T: 4, kd_weight: 0.9}` or `shapes: {train_size: 5000}`; it is checked
against the component's own options dataclass. `key=value` overrides (dotted for sections:
`kd.T=2`) are applied before validation, so they get the same checks and messages.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kd.options import as_dict, build
from kd.errors import KDError
from kd.yamlio import load_mapping


@dataclass
class Recipe:
    imports: list[str] = field(default_factory=list, metadata={"help": "Python files (relative to the recipe) or modules to import first, e.g. to register your own distiller"})
    name: str = field(default="run", metadata={"help": "name of the run (letters, digits, '.', '_', '-'; at most 100 characters); run directories are <output_dir>/<name>-<time>"})
    pair: str | None = field(default=None, metadata={"help": "teacher/student pair from teachers/pairs.yaml (sets teacher, student, dataset, teacher_checkpoint)"})
    teacher: str | None = field(default=None, metadata={"help": "teacher architecture (zoo name, timm:<name> or torchvision:<name>)"})
    student: str | None = field(default=None, metadata={"help": "student architecture"})
    teacher_checkpoint: str | None = field(default=None, metadata={"help": "teacher weights: a state dict or a dict whose 'model' entry is one"})
    dataset: str | None = field(default=None, metadata={"help": "data set name (run_kd.py list shows them); default: the pair's, else shapes"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding the data set"})
    download: bool = field(default=False, metadata={"help": "let torchvision download a missing data set"})
    subset_per_class: int | None = field(default=None, metadata={"min": 1, "help": "train on a balanced subset of n images per class (fixed seed), drawn from what val_split leaves"})
    val_split: int | None = field(default=None, metadata={"min": 1, "help": "hold out n images per class of the training set as a validation split (fixed seed, disjoint from training): tables show its accuracy, best epochs and settings are chosen on it"})
    methods: list[str] = field(default_factory=lambda: ["vanilla"], metadata={"help": "distillers to train the student with, one student each; 'name@variant' is a variant with its own options section; groups: all, mission, logit, feature, cam"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"min": 0, "max": 2**31 - 1, "why": "a 31-bit seed", "help": "one student per method and seed"})
    epochs: int = field(default=240, metadata={"min": 1, "max": 100_000, "help": "training epochs"})
    batch_size: int = field(default=64, metadata={"min": 2, "max": 1_000_000, "why": "batch normalisation cannot train on batches of one image", "help": "training batch size (global, over all processes)"})
    eval_batch_size: int = field(default=512, metadata={"min": 1, "max": 1_000_000, "help": "test batch size"})
    lr: float = field(default=0.05, metadata={"gt": 0, "max": 100, "help": "initial learning rate"})
    lr_batch: int | None = field(default=None, metadata={"min": 1, "help": "the batch size lr is given for; when set, lr scales linearly with batch_size / lr_batch"})
    momentum: float = field(default=0.9, metadata={"min": 0, "max": 1, "help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=5e-4, metadata={"min": 0, "max": 1, "help": "SGD weight decay"})
    schedule: Literal["multistep", "cosine", "constant"] = field(default="multistep", metadata={"help": "learning-rate schedule"})
    milestones: list[int] | None = field(default=None, metadata={"min": 1, "help": "multistep: epochs at which the rate is multiplied by gamma; null: 5/8, 6/8 and 7/8 of epochs (150, 180, 210 of 240)"})
    gamma: float = field(default=0.1, metadata={"gt": 0, "max": 1, "help": "multistep decay factor"})
    warmup_epochs: int = field(default=0, metadata={"min": 0, "max": 100_000, "help": "linear learning-rate warm-up epochs"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else CPU), cpu, cuda, cuda:N"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={"help": "auto: bf16 autocast on GPUs that support it and on CPUs with AMX or AVX512-BF16 (detected), fp32 elsewhere"})
    channels_last: bool | None = field(default=None, metadata={"help": "channels_last memory format; null (auto): on, the faster layout on GPUs and on the CPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile student and teacher"})
    compile_teacher: bool | None = field(default=None, metadata={"help": "torch.compile the teacher's passes (not the student), with inductor's freezing: its weights as constants, pre-packed; null (auto): on the CPU for runs of at least 20,000 teacher passes (epochs x batches x seeds), where the compile's one-off cost is repaid many times (results/bench/compile-teacher-cpu.md); compile: true compiles the teacher in any case"})
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = field(default="default", metadata={"help": "torch.compile mode; reduce-overhead uses CUDA graphs (small batches on fast GPUs)"})
    deterministic: bool = field(default=False, metadata={"help": "deterministic algorithms (slower)"})
    sync_bn: bool = field(default=False, metadata={"help": "under torchrun: batch-norm statistics over all processes (GPUs only)"})
    teacher_fold_bn: bool = field(default=True, metadata={"help": "run the teacher's passes with each BatchNorm folded into the convolution before it (the same function in eval mode, fewer kernels; checked on a probe batch and left unfolded, with a warning, where the copy does not reproduce the teacher); not with compile, whose freezing folds them itself"})
    shared_teacher: bool = field(default=True, metadata={"help": "train all students of a seed side by side, one teacher pass per batch"})
    resume: str | None = field(default=None, metadata={"help": "a run directory of this recipe to continue from its last checkpoints"})
    output_dir: str = field(default="runs", metadata={"help": "where run directories are made"})
    checkpoint_every: int = field(default=1, metadata={"min": 1, "max": 100_000, "help": "save the resumable checkpoint every n epochs"})
    log: list[Literal["csv", "tensorboard"]] = field(default_factory=lambda: ["csv"], metadata={"help": "where every epoch's scalars go: csv (metrics.csv, always written: tables and resumes read it) and tensorboard (<run>/tensorboard/<student>/; pip install 'kd[tensorboard]')"})
    shard: str | None = field(default=None, metadata={"help": "I/N: train only the I-th (1-based) of N disjoint slices of the recipe's students (methods x seeds, dealt out by their step costs so that the slices take about equal time), in a run directory of its own; run_kd.py report merges the N run directories"})
    # Not keys of the file: filled in by recipe_from_mapping.
    sections: dict = field(default_factory=dict, init=False, metadata={"help": "options per distiller / data set, keyed by its name"})
    source: str = field(default="", init=False, metadata={"help": "the file the recipe came from"})

    def require_teacher_checkpoint(self) -> Path:
        """The teacher checkpoint's path, or one line saying how to get the file when it is not there."""
        from kd.pairs import get_pair

        if self.teacher_checkpoint is None:
            raise KDError(f"{self.source or 'recipe'}: no teacher_checkpoint for teacher '{self.teacher}'; "
                          f"set teacher_checkpoint, or use a pair (run_kd.py list pairs)")
        path = Path(self.teacher_checkpoint).expanduser()
        if path.is_file():
            return path
        if self.pair and get_pair(self.pair).owns(path):
            raise get_pair(self.pair).missing_checkpoint()
        if path.is_dir():
            raise KDError(f"teacher checkpoint {path} is a folder, not a file; set teacher_checkpoint to the .pt file")
        raise KDError(f"teacher checkpoint {path} does not exist; check teacher_checkpoint in the recipe")

    def teacher_hint(self) -> str:
        """How to make the teacher checkpoint again, when it is the pair's own ('' otherwise)."""
        from kd.pairs import get_pair

        if self.pair and get_pair(self.pair).owns(self.teacher_checkpoint):
            return get_pair(self.pair).remake_hint()
        return ""

    @property
    def run_name(self) -> str:
        """The name of this recipe's run directories: the recipe's name, plus the shard when it trains one."""
        if self.shard is None:
            return self.name
        index, count = shard_numbers(self.shard)
        return f"{self.name}-shard{index}of{count}"

    def students(self) -> list[tuple[str, int]]:
        """The (method, seed) students this recipe trains, seed-major: all of them, or its shard's slice.

        Shard I of N takes the I-th of N contiguous slices of that list, cut where the summed step costs of the
        students (each distiller's `step_cost`: a KD step is 1, the student alone about 0.5, CRD about 1.7,
        ReviewKD about 2.5) come closest to I/N of the total, so that the shards take about equal time.
        Contiguous slices keep the students of a seed together, so that they share one teacher pass per batch (a
        seed split over k shards costs k teacher passes)."""
        grid = [(method, seed) for seed in self.seeds for method in self.methods]
        if self.shard is None:
            return grid
        index, count = shard_numbers(self.shard)
        start, stop = balanced_cuts([method_class(m).step_cost for m, _ in grid], count)[index - 1:index + 1]
        return grid[start:stop]

    def data_options(self):
        """The validated options of the data set (its section, defaults filled in)."""
        from kd.data import DATASETS

        options_cls = DATASETS.get(self.dataset).Options
        return build(options_cls, self.sections.get(self.dataset), self.source or "recipe", self._lines, f"{self.dataset}.")

    def method_options(self, label: str):
        """The validated options of method `label`: its distiller's section, then a variant's own on top."""
        name, variant = split_label(label)
        merged = dict(self.sections.get(name) or {})
        lines = {f"{label}.{k}": self._lines[f"{name}.{k}"] for k in merged if f"{name}.{k}" in self._lines}
        if variant is not None:
            merged.update(self.sections.get(label) or {})
            lines.update({k: v for k, v in self._lines.items() if k.startswith(label + ".")})
        return build(method_class(label).Options, merged, self.source or "recipe", lines, f"{label}.")

    def resolved_sections(self) -> dict[str, dict]:
        """Every used component's options with their defaults filled in (what the run really used)."""
        out = {self.dataset: as_dict(self.data_options())}
        for label in self.methods:
            out[label] = as_dict(self.method_options(label))
        return {name: options for name, options in out.items() if options}

    def to_yaml(self) -> str:
        """The fully resolved recipe: loading it again gives the same run."""
        data = {k: v for k, v in as_dict(self).items() if k not in ("sections", "source", "_lines")}
        data.update(self.resolved_sections())
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)

    _lines: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # dotted key -> line


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise KDError(f"override '{text}' does not parse: write key=value, e.g. epochs=5 or kd.T=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise KDError(f"override '{text}': the value '{raw}' is not valid YAML; quote strings, write lists as [1, 2]") from None
    return key.strip().split("."), value


def apply_override(data: dict, text: str) -> None:
    path, value = parse_override(text)
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise KDError(f"override '{text}': '{part}' is not a section, so it has no key '{path[-1]}'")
        node = child
    node[path[-1]] = value


def split_label(label: str) -> tuple[str, str | None]:
    """'ccm@w2' -> ('ccm', 'w2'); 'kd' -> ('kd', None)."""
    name, sep, variant = label.partition("@")
    return name, (variant if sep else None)


def method_class(label: str):
    from kd.distillers import DISTILLERS

    return DISTILLERS.get(split_label(label)[0])


def is_section(key: str) -> bool:
    """Whether a top-level key holds a component's options: a distiller, a data set, or a 'distiller@variant'."""
    from kd.data import DATASETS
    from kd.distillers import DISTILLERS

    return key in DISTILLERS or key in DATASETS or ("@" in key and split_label(key)[0] in DISTILLERS)


def run_imports(imports, source: str) -> list[str]:
    """Import the recipe's `imports`: .py files relative to the recipe, or dotted module names.

    Returns the entries with files made absolute, so the resolved recipe works from the run directory.
    A file or module that fails to import (syntax error, missing dependency, an error it raises, a name it
    registers that is taken) is one KDError line naming it."""
    import importlib
    import importlib.util
    import sys

    base = Path(source).parent if source and source not in ("recipe", "--import") else Path.cwd()
    resolved = []
    for entry in imports:
        resolved.append(str((base / entry).resolve()) if entry.endswith(".py") else entry)
        where = f"{source}: imports entry '{entry}'"
        if entry.endswith(".py"):
            path = (base / entry).resolve()
            if not path.is_file():
                raise KDError(f"{where} is not a file (looked for {path})")
            name = f"kd_user_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[name]
                raise import_failure(where, err) from err
        else:
            try:
                importlib.import_module(entry)
            except ModuleNotFoundError as err:
                if err.name and entry.startswith(err.name):
                    raise KDError(f"{where} cannot be imported: no module named '{err.name}'; check the name, "
                                  f"or give a .py file") from None
                raise import_failure(where, err) from err
            except Exception as err:
                raise import_failure(where, err) from err
    return resolved


def import_failure(where: str, err: Exception) -> KDError:
    """One line for a user's file or module that failed to import."""
    if isinstance(err, KDError):
        return KDError(f"{where}: {err}")
    if isinstance(err, SyntaxError):
        return KDError(f"{where} has a syntax error at line {err.lineno} ({err.msg}); fix the file")
    if isinstance(err, ModuleNotFoundError):
        return KDError(f"{where} needs the module '{err.name}', which is not installed; install it "
                       f"(pip install ...) or remove that import")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return KDError(f"{where} raised {type(err).__name__}{': ' + first if first else ''} while being imported; "
                   f"fix the file (--debug shows the traceback)")


def recipe_from_mapping(data: dict, source: str = "recipe", lines: dict | None = None) -> Recipe:
    """Validate a raw mapping into a Recipe (sections split off and checked by `validate`)."""
    lines = lines or {}
    imports = data.get("imports") or []
    if isinstance(imports, list) and all(isinstance(i, str) for i in imports):
        # first: an imported distiller's name is a valid method and section
        data = {**data, "imports": run_imports(imports, source)}
    sections = {k: v for k, v in data.items() if is_section(str(k))}
    for name, value in sections.items():
        if value is not None and not isinstance(value, dict):
            at = f"{source}:{lines[name]}" if name in lines else source
            raise KDError(f"{at}: '{name}' holds the options of the {name} component and must be a mapping, e.g. {name}: {{key: value}}")
    flat = {k: v for k, v in data.items() if k not in sections}
    recipe = build(Recipe, flat, source, lines)
    recipe.sections = {k: (v or {}) for k, v in sections.items()}
    recipe.source = source
    recipe._lines = dict(lines)
    return validate(recipe)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """A recipe file (a relative path that is not there is looked for among kd's own recipes, kd.home) with
    `key=value` overrides applied, validated."""
    from kd import home

    if not Path(path).exists() and not Path(path).is_absolute() and home.find(path).exists():
        path = home.find(path)
    data, lines = load_mapping(path)
    for text in overrides:
        apply_override(data, text)
        lines.pop(text.partition("=")[0].strip(), None)  # the value no longer comes from the file
    return recipe_from_mapping(data, str(path), lines)


def validate(recipe: Recipe) -> Recipe:
    """Cross-field checks and pair resolution; every component name is looked up here, before any work."""
    from kd.data import DATASETS
    from kd.distillers import expand_methods
    from kd.models import MODELS, ADAPTER_PREFIXES
    from kd.pairs import get_pair

    where = recipe.source or "recipe"
    if not NAME.fullmatch(recipe.name) or len(recipe.name) > 100:
        raise KDError(f"{where}: name '{recipe.name[:120]}' cannot name a run directory: use at most 100 letters, "
                      f"digits, '.', '_' or '-' (no '/', no '..'), e.g. name: my-run")
    if recipe.pair:
        pair = get_pair(recipe.pair)
        recipe.teacher = recipe.teacher or pair.teacher
        recipe.student = recipe.student or pair.student
        if recipe.teacher_checkpoint is None and recipe.teacher == pair.teacher:
            recipe.teacher_checkpoint = str(pair.checkpoint_path)
        recipe.dataset = recipe.dataset or pair.dataset
    recipe.dataset = recipe.dataset or "shapes"
    DATASETS.get(recipe.dataset)
    recipe.methods = expand_methods(recipe.methods)
    if not recipe.methods:
        raise KDError(f"{where}: 'methods' is empty; list at least one distiller, e.g. methods: [vanilla]")
    if not recipe.seeds:
        raise KDError(f"{where}: 'seeds' is empty; list at least one seed, e.g. seeds: [0]")
    for label in recipe.methods:
        try:
            method_class(label)
        except KDError as err:
            from kd.distillers import GROUPS

            raise KDError(f"{where}: {err}; or a group: all, {', '.join(GROUPS)}") from None
        name, variant = split_label(label)
        if variant is not None and not NAME.fullmatch(variant):
            raise KDError(f"{where}: method '{label}': a variant needs a name after '@' (letters, digits, '.', '_', "
                          f"'-'), e.g. {name}@w2")
        if len(label) > 100:  # it names the student's folder: file systems refuse names past 255 bytes
            raise KDError(f"{where}: method '{label[:60]}...' is {len(label)} characters long; a method label names "
                          f"a folder, so use at most 100, e.g. {name}@w2")
    if len(set(recipe.methods)) != len(recipe.methods) or len(set(recipe.seeds)) != len(recipe.seeds):
        raise KDError(f"{where}: 'methods' and 'seeds' must not repeat an entry")
    if not recipe.student:
        raise KDError(f"{where}: no student: set 'student' (a model name) or 'pair' (run_kd.py list shows both)")
    for role in ("teacher", "student"):
        name = getattr(recipe, role)
        if name and not name.startswith(ADAPTER_PREFIXES):
            MODELS.get(name)
    needing = [m for m in recipe.methods if method_class(m).needs_teacher]
    if needing and not recipe.teacher:
        raise KDError(f"{where}: {', '.join(needing)} needs a teacher: set 'pair', or 'teacher' and 'teacher_checkpoint'")
    if recipe.shard is not None:
        index, count = shard_numbers(recipe.shard, where)
        students = len(recipe.methods) * len(recipe.seeds)
        if count > students:
            raise KDError(f"{where}: shard {recipe.shard}: the recipe has {students} students ({len(recipe.methods)} "
                          f"methods x {len(recipe.seeds)} seeds), so {count} shards would leave some empty; use at most "
                          f"{students} shards")
    if recipe.milestones is None:  # 5/8, 6/8, 7/8 of the epochs; short runs get fewer steps, never one at epoch 0
        recipe.milestones = list(dict.fromkeys(max(1, recipe.epochs * k // 8) for k in (5, 6, 7)))
    if recipe.warmup_epochs > recipe.epochs:
        raise KDError(f"{where}: warmup_epochs={recipe.warmup_epochs} is longer than the run (epochs={recipe.epochs}); "
                      f"use at most {recipe.epochs}")
    if recipe.schedule == "multistep" and any(m > recipe.epochs for m in recipe.milestones):
        raise KDError(f"{where}: milestones {recipe.milestones} lie beyond epochs={recipe.epochs}; lower them or drop the ones past the end")
    # Every section's options are checked now, so a typo fails before any training starts: those of the
    # methods trained, and of every other distiller section the recipe holds (a typo there would hide later).
    for label in dict.fromkeys([*recipe.methods, *(k for k in recipe.sections if k not in DATASETS)]):
        recipe.method_options(label)
    recipe.data_options()
    for name, options in recipe.sections.items():  # a data set's section the run does not use is checked too
        if name in DATASETS and name != recipe.dataset:
            build(DATASETS.get(name).Options, options, where, recipe._lines, f"{name}.")
    return recipe


def shown_value(mapping: dict, key: str) -> str:
    """A recipe key's value in a saved recipe mapping (its default when the mapping predates the key), cut to 40
    characters for one-line messages about recipes that differ."""
    text = str(mapping.get(key, default_of(key)))
    return text if len(text) <= 40 else text[:37] + "..."


def default_of(key: str):
    """A recipe key's default value (None for a key that is no field of Recipe): what a recipe saved before the key
    existed meant, so that older run directories still resume and merge."""
    for f in dataclasses.fields(Recipe):
        if f.name == key and f.init:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def balanced_cuts(costs: list[float], count: int) -> list[int]:
    """Indices 0 = c0 < c1 < ... < c_count = len(costs) that split `costs` into `count` contiguous, non-empty
    slices whose sums come as close as the items allow to equal: each cut where the running sum is nearest to
    its share of the total (the earlier index on a tie)."""
    running = [0.0]
    for cost in costs:
        running.append(running[-1] + cost)
    cuts = [0]
    for i in range(1, count):
        target = running[-1] * i / count
        lowest, highest = cuts[-1] + 1, len(costs) - (count - i)  # leave at least one student per shard
        cuts.append(min(range(lowest, highest + 1), key=lambda k: (abs(running[k] - target), k)))
    return cuts + [len(costs)]


def shard_numbers(shard: str, where: str = "recipe") -> tuple[int, int]:
    """'2/4' -> (2, 4), or one line saying how to write a shard."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise KDError(f"{where}: shard '{shard}' is not I/N with 1 <= I <= N, e.g. --shard 1/4 (the first of four "
                      f"slices; under a Slurm array: --shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT)")
    return int(match.group(1)), int(match.group(2))


NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file name: no '/', no '..', no leading '.' 
