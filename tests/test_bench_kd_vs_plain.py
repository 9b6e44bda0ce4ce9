"""bench/kd_vs_plain.py runs the kd-vs-plain bench in fresh processes and states the ratio with its interval."""
import csv
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from kd_vs_plain import summary  # noqa: E402


def test_kd_vs_plain_writes_each_process_its_mean_and_every_round(tmp_path):
    out = tmp_path / "kd-vs-plain.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "kd_vs_plain.py"), "quickstart", "compile_teacher=false",
                           "--processes", "2", "--steps", "1", "--rounds", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0]]
    assert cells[1] == "2"
    ratios = [float(r) for r in cells[4].split(", ")]
    mean, interval = cells[5].split(" ", 1)
    assert len(ratios) == 2 and abs(float(mean) - sum(ratios) / 2) <= 0.011  # of the ratios printed to 2 decimals
    assert interval.startswith("[") and interval.endswith("]")
    with open(out.with_suffix(".csv"), newline="") as f:
        raw = list(csv.DictReader(f))
    # 2 processes x 4 steps (plain, teacher_forward, vanilla, kd) x 2 rounds
    assert len(raw) == 16 and {r["step"] for r in raw} == {"plain", "teacher_forward", "vanilla", "kd"}
    for process, ratio in zip(("1", "2"), ratios):  # each process's ratio is of its own rounds' medians
        mine = lambda step: sorted(float(r["ms_per_step"]) for r in raw if r["process"] == process and r["step"] == step)
        median = lambda v: (v[0] + v[1]) / 2
        assert abs(median(mine("plain")) / median(mine("kd")) - ratio) < 0.01
    assert "python bench/kd_vs_plain.py quickstart compile_teacher=false --processes 2" in out.read_text()


def sample(plain, kd, vanilla=20.0, teacher=10.0):
    return {"median_ms": {"plain": plain, "kd": kd, "vanilla": vanilla, "teacher_forward": teacher}}


def test_the_verdict_is_above_only_where_the_whole_interval_is():
    above = summary([sample(126, 60), sample(125.4, 60), sample(126.6, 60)])  # 2.10, 2.09, 2.11
    assert above["verdict"] == "above 2.0" and above["low"] > 2.0
    assert abs(above["mean"] - 2.10) < 1e-9 and abs(above["floor_mean"] - 126 / 30) < 1e-9
    wide = summary([sample(126, 60), sample(123, 60), sample(129, 60)])  # 2.10, 2.05, 2.15: t(2) = 4.3 is wide
    assert wide["mean"] > 2.0 and wide["low"] < 2.0 and wide["verdict"].startswith("cannot be told from 2.0")
    tie = summary([sample(118, 60), sample(135, 60), sample(124, 60)])  # 1.97, 2.25, 2.07
    assert tie["verdict"].startswith("cannot be told from 2.0") and tie["low"] < 2.0 < tie["high"]
    below = summary([sample(110, 60), sample(111, 60), sample(112, 60)])
    assert below["verdict"] == "below 2.0" and below["high"] < 2.0
    assert summary([sample(120, 60)])["verdict"] == "no interval (one process)"


def test_a_wrong_pair_is_one_line_and_exit_2_before_anything_is_written(tmp_path):
    out = tmp_path / "kd-vs-plain.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "kd_vs_plain.py"), "quickstart", "nosuchpair",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "unknown pair 'nosuchpair'" in done.stderr
    assert not out.exists() and not out.with_suffix(".csv").exists() and "process 1" not in done.stdout
