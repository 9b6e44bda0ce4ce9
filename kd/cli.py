"""Command line: run / teacher / list (compare, report, evaluate and bench build on the same pieces).

    python run_kd.py RECIPE.yaml [key=value ...]      train every method of the recipe
    python run_kd.py compare RECIPE.yaml [--shard I/N] train them side by side (or one slice), then tables and plots
    python run_kd.py teacher PAIR [--download]         train (or fetch, or report) the pair's teacher
    python run_kd.py evaluate CHECKPOINT_OR_RUN_DIR    test accuracy and loss of saved checkpoints
    python run_kd.py list [models|datasets|distillers|pairs|recipes]

Bad input of any kind (recipe, argument, data folder, checkpoint) prints one line and exits with
code 2; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from kd.errors import KDError, Stopped

COMMANDS = ("run", "compare", "teacher", "evaluate", "list", "report", "bench")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors become one KDError line too
        raise KDError(f"{self.prog}: {message}; see --help")


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="run_kd.py", description="kd: knowledge distillation for image classifiers")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (any position)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import a .py file or module first, e.g. one that registers your own distiller "
                             "(as a recipe's imports: key does); repeatable")
    sub = parser.add_subparsers(dest="command", parser_class=ArgumentParser)
    run = sub.add_parser("run", help="train the students of a recipe")
    run.add_argument("recipe", nargs="?", help="recipe YAML file (optional with --resume)")
    run.add_argument("overrides", nargs="*", help="key=value (dotted for sections: kd.T=2)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoints")
    compare = sub.add_parser("compare", help="train every method on a pair and write the comparison tables and plots")
    compare.add_argument("recipe", help="recipe YAML file (methods default to the mission group, the seven of kd's mission)")
    compare.add_argument("overrides", nargs="*", help="key=value, e.g. methods=[kd,ccm] seeds=[0,1,2]")
    compare.add_argument("--fresh", action="store_true", help="start a new comparison even if an interrupted one exists")
    compare.add_argument("--shard", metavar="I/N", help="train only the I-th (1-based) of N disjoint slices of the "
                                                         "students, in a run directory of its own; merge the N run "
                                                         "directories with `run_kd.py report DIR1 DIR2 ...`")
    report = sub.add_parser("report", help="rebuild tables and plots from run directories, without training")
    report.add_argument("run_dirs", nargs="+", help="run directories (several merge into one table)")
    report.add_argument("--out", help="output folder (default: the first run directory's report/)")
    report.add_argument("--published", action="store_true", help="also set the runs beside the published CIFAR-100 numbers")
    bench = sub.add_parser("bench", help="measure the training-step throughput of every method on a pair")
    bench.add_argument("pair")
    bench.add_argument("overrides", nargs="*", help="recipe keys, e.g. batch_size=64 device=cpu methods=[mission] (default: every method)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per round")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    bench.add_argument("--out", default="results/bench", help="output folder")
    teacher = sub.add_parser("teacher", help="train a pair's teacher, or report the one it has")
    teacher.add_argument("pair")
    teacher.add_argument("overrides", nargs="*", help="key=value overrides of the teacher recipe")
    teacher.add_argument("--retrain", action="store_true", help="train even when the checkpoint exists")
    teacher.add_argument("--download", action="store_true",
                         help="fetch the pair's published teacher (the URLs teachers/pairs.yaml lists) instead of "
                              "training it; key=value overrides of the teacher recipe set where its data is "
                              "(data_root=...) for the evaluation that follows")
    teacher.add_argument("--from", dest="local", metavar="FILE",
                         help="with --download: take this local copy of a published teacher file instead of "
                              "downloading it (checked by its sha256, kept byte for byte)")
    evaluate = sub.add_parser("evaluate", help="test top-1, top-5, loss (and CAM localisation) of saved checkpoints")
    evaluate.add_argument("target", metavar="CHECKPOINT_OR_RUN_DIR",
                          help="a run directory (every student's last checkpoint) or one checkpoint file")
    evaluate.add_argument("--data", metavar="NAME", help="data set (default: the run's, or the pair's)")
    evaluate.add_argument("--data-root", metavar="PATH", help="its data_root (default: the run's or the pair's)")
    evaluate.add_argument("--arch", metavar="NAME", help="architecture of a checkpoint that does not name it "
                                                        "(the benchmark's format, a bare state dict)")
    evaluate.add_argument("--out", metavar="FILE", help="also write the rows to this CSV file")
    listing = sub.add_parser("list", help="show models, data sets, distillers, pairs and recipes")
    listing.add_argument("what", nargs="?", default="all",
                         choices=["all", "models", "datasets", "distillers", "pairs", "recipes"])
    return parser


def on_sigterm(signum, frame):
    raise Stopped(signal_name="SIGTERM")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)  # stop like Ctrl-C: checkpoints stay whole, the resume is named
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        argv, imports = split_imports(argv)
        if "--resume" in argv and argv[0] in COMMANDS[1:]:
            raise KDError(f"{argv[0]} takes no --resume: `run_kd.py compare RECIPE` resumes an interrupted comparison "
                          f"of the same recipe by itself, and `run_kd.py --resume RUN_DIR` continues any run")
        if "--resume" in argv[1:]:  # `run_kd.py RECIPE --resume DIR key=value`: the option may stand anywhere
            at = argv.index("--resume")
            argv = argv[at:at + 2] + argv[:at] + argv[at + 2:]
            if argv[2:3] == ["run"]:
                argv = ["run"] + argv[:2] + argv[3:]
        # `run_kd.py RECIPE.yaml ...` and `run_kd.py --resume DIR` are short for `run_kd.py run ...`
        first = next((a for a in argv if not a.startswith("-")), None)
        if (first is not None and first not in COMMANDS) or (argv and argv[0] == "--resume"):
            argv.insert(0, "run")
        parser = make_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # key=value after an option (`compare R --shard 1/4 epochs=2`): argparse leaves those over
            if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = [*args.overrides, *extra]
        if imports:
            from kd.recipe import run_imports

            run_imports(imports, "--import")
        if args.command is None:
            make_parser().print_help()
            return 0
        handlers = {"run": cmd_run, "compare": cmd_compare, "teacher": cmd_teacher, "evaluate": cmd_evaluate,
                    "list": cmd_list, "report": cmd_report, "bench": cmd_bench}
        return handlers[args.command](args)
    except KDError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        run_dir = getattr(stop, "run_dir", None)
        signal_name = getattr(stop, "signal_name", "SIGINT")
        what = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
        print(f"{what}; " + (f"the finished epochs are kept in {run_dir}: resume with `python run_kd.py --resume "
                             f"{run_dir}`" if run_dir else "nothing had been written yet"), file=sys.stderr)
        return 130 if signal_name == "SIGINT" else 143
    except OSError as err:  # the file system refused (full, read-only, no permission): the user's to fix
        if debug or not err.filename:
            raise
        print(f"error: cannot use {err.filename} ({err.strerror}); free space or fix the path and its permissions",
              file=sys.stderr)
        return 2


def split_imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the values of every `--import X` / `--import=X`, which may stand anywhere)."""
    rest, imports = [], []
    items = iter(argv)
    for arg in items:
        if arg == "--import":
            value = next(items, None)
            if value is None:
                raise KDError("--import needs a value: a .py file or a module name")
            imports.append(value)
        elif arg.startswith("--import="):
            imports.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, imports


def console():
    from rich.console import Console

    import sys as _sys

    return Console(highlight=False, width=None if _sys.stdout.isatty() else 160)


def progress_bar(con):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), count_column(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=con, transient=True)


def count_column():
    """done/total: steps for most tasks, sizes (kB, MB) for downloads (tasks added with bytes=True)."""
    from rich.progress import DownloadColumn, MofNCompleteColumn, ProgressColumn

    class CountColumn(ProgressColumn):
        def __init__(self):
            super().__init__()
            self.steps, self.size = MofNCompleteColumn(), DownloadColumn()

        def render(self, task):
            return (self.size if task.fields.get("bytes") else self.steps).render(task)

    return CountColumn()


def cmd_run(args) -> int:
    from kd.engine.rundir import RunDir
    from kd.recipe import load_recipe

    overrides = list(args.overrides)
    if args.recipe and "=" in args.recipe and not Path(args.recipe).exists():
        overrides.insert(0, args.recipe)  # `--resume DIR key=value`: the first override, not a recipe
        args.recipe = None
    if args.resume:
        overrides.append(f"resume={args.resume}")
    if args.recipe is None:
        if not args.resume:
            raise KDError("run_kd.py run: give a recipe (run_kd.py RECIPE.yaml) or --resume RUN_DIR")
        recipe = RunDir.open(args.resume, "--resume").recipe(overrides)
    else:
        recipe = load_recipe(args.recipe, overrides)
    con = console()
    result = train(recipe, con)
    if result.is_main:
        print_summary(con, result)
    return 0


def train(recipe, con):
    """A pair's teacher first when it is to be trained on demand, then the run. The output folder is checked
    before either: a teacher is never trained for a run that could not be written."""
    from kd.engine.rundir import RunDir
    from kd.run import run_recipe
    from kd.teacher import ensure_teacher

    if recipe.resume is None:
        RunDir.check_writable(recipe.output_dir)
    with progress_bar(con) as progress:
        ensure_teacher(recipe, con, progress)
        return run_recipe(recipe, con, progress)


def command_line() -> str:
    return " ".join(["python run_kd.py", *sys.argv[1:]])


def cmd_compare(args) -> int:
    from kd.engine.rundir import RunDir
    from kd.recipe import load_recipe
    from kd.report.write import write_report
    from kd.yamlio import load_mapping

    raw, _ = load_mapping(args.recipe)
    overrides = list(args.overrides)
    if "methods" not in raw and not any(o.split("=", 1)[0].strip() == "methods" for o in overrides):
        overrides.insert(0, "methods=[mission]")
    if args.shard is not None:
        overrides.append(f"shard={args.shard}")
    recipe = load_recipe(args.recipe, overrides)
    con = console()
    if not args.fresh and recipe.resume is None:
        unfinished = RunDir.find_interrupted(recipe.output_dir, recipe.run_name, recipe.to_yaml())
        if unfinished is not None:
            con.print(f"resuming the interrupted comparison in {unfinished} (--fresh starts a new one)")
            recipe.resume = str(unfinished)
    result = train(recipe, con)
    if result.is_main:
        write_report([result.run_dir.path], result.run_dir.report_dir, command_line(), con)
        if recipe.shard is not None:
            con.print(f"this is shard {recipe.shard} of the comparison; when every shard has finished, merge their "
                      f"run directories into one table with `python run_kd.py report DIR1 DIR2 ... --out FOLDER`")
    return 0


def cmd_report(args) -> int:
    from kd.report.write import write_report

    from kd.engine.rundir import RunDir

    runs = [RunDir.open(path, "report") for path in args.run_dirs]  # first: a wrong run directory is the mistake
    out = Path(args.out) if args.out else runs[0].report_dir
    if out.exists() and not out.is_dir():
        raise KDError(f"report --out {out}: that is a file; give a folder (it is made if missing)")
    RunDir.check_writable(out)
    write_report(args.run_dirs, out, command_line(), console(), published=args.published)
    return 0


def cmd_evaluate(args) -> int:
    from kd.engine.checkpoint import write_atomic
    from kd.engine.rundir import RunDir
    from kd.evaluate import plan, rows_csv, run_evaluation

    out = Path(args.out).expanduser() if args.out else None
    if out is not None:  # checked first: a long evaluation never ends in an unwritable file
        if out.is_dir():
            raise KDError(f"evaluate --out {out}: that is a folder; give a file name, e.g. --out evaluation.csv")
        RunDir.check_writable(out.parent)
    subjects, setting = plan(args.target, args.data, args.data_root, args.arch)
    con = console()
    with progress_bar(con) as progress:
        rows = run_evaluation(subjects, setting, con, progress)
    print_evaluation(con, rows, args.target)
    if out is not None:
        write_atomic(out, rows_csv(rows))
        con.print(f"written to {out}")
    return 0


def print_evaluation(con, rows: list[dict], target: str) -> None:
    from rich.table import Table

    table = Table(title=f"test split, {target}")
    columns = [("model", "model"), ("arch", "arch"), ("epoch", "epoch"), ("test_top1", "top-1 %"),
               ("test_top5", "top-5 %"), ("test_loss", "loss"), ("loc_energy", "CAM in box %"),
               ("loc_pointing", "pointing %")]
    columns = [(key, title) for key, title in columns if any(key in row for row in rows)]
    for key, title in columns:
        table.add_column(title, justify="left" if key in ("model", "arch") else "right")
    for row in rows:
        table.add_row(*["-" if row.get(key) is None else f"{row[key]:.2f}" if isinstance(row[key], float)
                        else str(row[key]) for key, _ in columns])
    con.print(table)


def cmd_bench(args) -> int:
    from kd.throughput import bench_pair, write_bench

    if args.steps < 1 or args.rounds < 1:
        raise KDError("bench: --steps and --rounds must be at least 1")
    recipe = bench_recipe(args.pair, args.overrides)
    con = console()
    result = bench_pair(recipe, args.steps, args.rounds, console=con)
    path = write_bench(result, args.pair, Path(args.out), command_line())
    con.print(path.read_text(), markup=False)
    return 0


def bench_recipe(pair: str, overrides: list[str]):
    """The recipe `bench PAIR key=value ...` measures: every registered method unless `methods` is given (those
    its imports register included), vanilla first, whose student step is the floor."""
    from kd.recipe import apply_override, recipe_from_mapping

    data = {"pair": pair, "methods": ["all"], "batch_size": 64}
    for text in overrides:
        apply_override(data, text)
    recipe = recipe_from_mapping(data, f"bench {pair}")
    recipe.methods = ["vanilla", *[m for m in recipe.methods if m != "vanilla"]]
    return recipe


def print_summary(con, result) -> None:
    from rich.table import Table

    table = Table(title=f"test top-1 (%), {result.run_dir}")
    for column in ("student", "seed", "last epoch", "best epoch", "teacher"):
        table.add_column(column, justify="left" if column == "student" else "right")
    teacher = "-" if result.teacher_top1 is None else f"{result.teacher_top1:.2f}"
    for row in result.rows:
        table.add_row(row["method"], str(row["seed"]), f"{row['last_top1']:.2f}", f"{row['best_top1']:.2f}", teacher)
    con.print(table)


def cmd_teacher(args) -> int:
    from kd.engine.checkpoint import read_checkpoint
    from kd.pairs import get_pair
    from kd.teacher import train_teacher
    from kd.teacher_download import download_teacher

    pair = get_pair(args.pair)
    if args.download and args.retrain:
        raise KDError("teacher: --download fetches the published teacher and --retrain trains one; choose one")
    if args.local and not args.download:
        raise KDError(f"teacher: --from {args.local} gives a published teacher file, which only --download takes; "
                      f"add --download")
    con = console()
    if pair.checkpoint_path.is_file() and not args.retrain:
        state = read_checkpoint(pair.checkpoint_path, "teacher checkpoint", pair.remake_hint())
        top1 = state.get("test_top1") if isinstance(state, dict) else None
        con.print(f"pair '{pair.name}': teacher {pair.teacher} at {pair.checkpoint_path}"
                  + (f" (test top-1 {top1:.2f}%)" if isinstance(top1, float) else "")
                  + ("; remove it to download it again" if args.download else "; --retrain trains it again"))
        return 0
    with progress_bar(con) as progress:
        if args.download:
            download_teacher(pair, args.overrides, con, progress, Path(args.local) if args.local else None)
        else:
            train_teacher(pair, args.overrides, con, progress)
    return 0


def cmd_list(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from kd import home
    from kd.data import DATASETS
    from kd.distillers import DISTILLERS, GROUPS
    from kd.models import model_names
    from kd.options import describe
    from kd.pairs import all_pairs

    con = console()
    what = args.what
    if what in ("all", "models"):
        con.print("[bold]models[/]: " + ", ".join(model_names()))
    if what in ("all", "datasets"):
        for name in DATASETS.names():
            source = DATASETS.get(name)
            options = ", ".join(f"{n}={d}" for n, _, d, _ in describe(source.Options))
            con.print(f"[bold]data set[/] {name}: {escape(source.summary())}" + (f"  ({escape(options)})" if options else ""))
    if what in ("all", "distillers"):
        for name in DISTILLERS.names():
            cls = DISTILLERS.get(name)
            options = ", ".join(f"{n}={d}" for n, _, d, _ in describe(cls.Options))
            groups = escape(f" [{', '.join(cls.groups)}]") if cls.groups else ""
            paper = f"\n    paper: {escape(cls.paper)}" if cls.paper and cls.paper != "-" else ""
            con.print(f"[bold]distiller[/] {name}{groups}: {escape(cls.summary())}{paper}\n    options: {escape(options)}")
        con.print("[bold]method groups[/] " + escape("(methods: [group]): all: every distiller; "
                                                     + "; ".join(f"{g}: {about}" for g, about in GROUPS.items())))
    if what in ("all", "pairs"):
        table = Table(title="pairs (teachers/pairs.yaml)")
        for column in ("pair", "teacher", "student", "data set", "teacher checkpoint"):
            table.add_column(column)
        for name, pair in all_pairs().items():
            have = "present" if pair.checkpoint_path.is_file() else (
                "trained on demand" if pair.train_on_demand else f"missing: run_kd.py teacher {name}"
                + (" --download" if pair.downloadable else ""))
            table.add_row(name, pair.teacher, pair.student, pair.dataset, f"{pair.teacher_checkpoint} ({have})")
        con.print(table)
    if what in ("all", "recipes"):
        recipes = sorted(p.relative_to(root.parent) for root in home.recipe_roots() for p in root.rglob("*.yaml"))
        con.print("[bold]recipes[/]:\n  " + "\n  ".join(str(p) for p in recipes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
