"""bench/compile_cpu.py makes compile a default only where the compiled step is faster beyond the spread between
processes: the t interval of its speed-up over the repeats lies above 1, and the recipe outlasts the break-even."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import compile_cpu  # noqa: E402


def cell(steady: float, first: float, passes=("with 3 BatchNorm layers folded into their convolutions",)):
    steps = [first] + [steady] * (compile_cpu.STEPS - 1)
    return {"steps": steps, "evals": [steady, steady / 2, steady / 2], "hardware": "cpu bf16 channels_last",
            "teacher_passes": list(passes), "recipe_steps": 187_680, "epochs": 240}


def run_main(monkeypatch, tmp_path, compiled_steadies):
    made = {False: iter([cell(0.100, 0.5)] * len(compiled_steadies)),
            True: iter([cell(s, 10.0) for s in compiled_steadies])}
    monkeypatch.setattr(compile_cpu, "child", lambda pair, compile_: next(made[compile_]))
    out = tmp_path / "compile.md"
    compile_cpu.main(["somepair"], len(compiled_steadies), out, "python bench/compile_cpu.py somepair")
    row = next(line for line in out.read_text().splitlines() if line.startswith("| somepair"))
    return [c.strip() for c in row.split("|")[1:-1]], out.read_text()


def test_a_clearly_faster_compiled_step_becomes_the_default(monkeypatch, tmp_path):
    cells, text = run_main(monkeypatch, tmp_path, [0.080, 0.081, 0.079])
    ratios = [0.1 / 0.080, 0.1 / 0.081, 0.1 / 0.079]
    assert cells[2] == "100.0" and cells[3] == "80.0"
    assert cells[4].startswith(f"{sum(ratios) / 3:.2f}x [") and float(cells[4].split("[")[1].split(",")[0]) > 1
    # one-off: compiled 9.92 s beyond its steady steps, eager 0.4 s; saving 20 ms a step
    assert cells[5] == "10" and abs(int(cells[6]) - (9.92 - 0.4) / 0.02) <= 1
    assert cells[-1] == "yes"
    assert "somepair: run with 3 BatchNorm layers folded into their convolutions" in text


def test_a_speed_up_within_the_spread_between_processes_is_no_default(monkeypatch, tmp_path):
    cells, _ = run_main(monkeypatch, tmp_path, [0.094, 0.103, 0.099])  # 1.06x, 0.97x, 1.01x
    assert float(cells[4].split("[")[1].split(",")[0]) < 1 < float(cells[4].split(", ")[1].rstrip("]"))
    assert cells[-1] == "no"
    cells, _ = run_main(monkeypatch, tmp_path, [0.080])  # one repeat: no interval, no default
    assert cells[4] == "1.25x" and cells[-1] == "no"
