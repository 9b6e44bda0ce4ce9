"""Adding a method is one file and nothing else: a distiller registered from outside the package shows up in
`list`, in `compare` with `methods: [all]`, and in `bench`, with no list of names edited anywhere."""
import ast
import csv
import subprocess
import sys

from conftest import run_cli
from kd.distillers import DISTILLERS
from test_cli_run import small_recipe

OUTSIDE = '''
from dataclasses import dataclass, field

from kd.distillers import BaseOptions, Distiller
from kd.distillers.registry import DISTILLERS
from kd.distillers.kd import kd_loss


@dataclass
class HalfKDOptions(BaseOptions):
    kd_weight: float = field(default=0.5, metadata={"min": 0, "help": "weight of the soft-target term"})


@DISTILLERS.register("half_kd", options=HalfKDOptions)
class HalfKD(Distiller):
    """KD at temperature 2 with half the usual weight, written outside kd."""

    groups = ("logit",)
    paper = "a test of kd's extension point"

    def forward(self, images, targets, teacher, epoch=0):
        logits = self.student(images)
        return logits, {"ce": self.ce(logits, targets), "soft": self.options.kd_weight * kd_loss(logits, teacher.logits, 2.0)}
'''


def test_a_method_added_in_one_outside_file_is_listed_compared_and_benched(tmp_path):
    (tmp_path / "half_kd.py").write_text(OUTSIDE)
    listing = run_cli("--import", str(tmp_path / "half_kd.py"), "list", "distillers")
    assert listing.returncode == 0, listing.stderr
    assert "half_kd [logit]: KD at temperature 2 with half the usual weight, written outside kd." in listing.stdout

    recipe = small_recipe(tmp_path, methods="[all]", extra=f"imports: [{tmp_path / 'half_kd.py'}]\n")
    compared = run_cli("compare", str(recipe), timeout=900)
    assert compared.returncode == 0, compared.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    table = list(csv.DictReader(open(run / "report" / "table.csv")))
    assert [row["method"] for row in table] == DISTILLERS.names() + ["half_kd"]  # every built-in method, then ours
    soft = list(csv.DictReader(open(run / "half_kd-s0" / "metrics.csv")))[0]["loss_soft"]
    assert float(soft) > 0

    # bench's default (no methods given) is every registered method, ours included
    probe = subprocess.run([sys.executable, "-c", "import sys; from kd.cli import bench_recipe; "
                            "print(bench_recipe('quickstart', [sys.argv[1]]).methods)",
                            f"imports=[{tmp_path / 'half_kd.py'}]"], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert ast.literal_eval(probe.stdout.strip()) == DISTILLERS.names() + ["half_kd"]
    bench = run_cli("bench", "quickstart", f"imports=[{tmp_path / 'half_kd.py'}]", "methods=[vanilla, kd, half_kd]",
                    "--steps", "1", "--rounds", "1", "--out", str(tmp_path / "bench"))
    assert bench.returncode == 0, bench.stderr[-3000:]
    written = (tmp_path / "bench" / "quickstart-cpu.md").read_text()
    assert "| half_kd |" in written
    # the bench builds the teacher's passes as a run of the pair's default 240 epochs would: folded, and compiled
    # where inductor can build CPU kernels
    from kd.run import cpp_compiler

    assert "the teacher's passes run with" in written and "folded into their convolutions" in written
    assert ("and compiled" in written) == cpp_compiler()
