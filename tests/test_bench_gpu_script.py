"""bench/gpu_cifar100.py runs end to end on the CPU (no GPU here) and projects the full recipe correctly."""
import subprocess
import sys

import pytest

from conftest import ROOT


def test_gpu_bench_script_runs_on_the_cpu_and_projects_from_throughput(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_cifar100.py"), "--device", "cpu", "--epochs", "1",
                           "--train-size", "128", "--test-size", "32", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| kd") or
            line.startswith("| ccm_kd")]
    assert [r[0].strip() for r in rows] == ["kd", "ccm_kd"]
    for r in rows:
        images_per_s, projected_min = float(r[2]), float(r[6])
        # 240 epochs of 50,000 images, not of the 128 measured here
        assert projected_min == pytest.approx(240 * 50000 / images_per_s / 60, rel=0.02)  # images/s is printed rounded
