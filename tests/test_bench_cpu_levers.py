"""bench/cpu_levers.py measures each lever on a pair's KD step and writes one row per pair."""
import subprocess
import sys

from conftest import ROOT


def test_cpu_levers_bench_writes_a_row_per_pair_with_its_ratios(tmp_path):
    out = tmp_path / "levers.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_levers.py"), "quickstart", "--steps", "1",
                           "--rounds", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0]]
    kd, off, off_ratio, item, item_ratio, run_eval, fp32_eval, eval_ratio, passed, copied, pass_ratio = \
        map(float, cells[2:])
    assert kd > 0 and off > 0 and item > 0 and run_eval > 0 and fp32_eval > 0 and passed > 0 and copied > 0
    assert abs(pass_ratio - copied / passed) < 0.01 + 0.01 * pass_ratio
    assert abs(off_ratio - off / kd) < 0.01 + 0.01 * off_ratio  # the ratios are of the printed times
    assert abs(item_ratio - item / kd) < 0.01 + 0.01 * item_ratio
    assert abs(eval_ratio - fp32_eval / run_eval) < 0.01 + 0.01 * eval_ratio
    assert "python bench/cpu_levers.py quickstart --steps 1 --rounds 1" in out.read_text()
