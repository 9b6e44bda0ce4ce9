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
        # 240 epochs of 50,000 images, not of the 128 measured here; images/s is printed rounded to a whole number
        # (a slow CPU makes that a few %), the projection to 0.1 min
        low, high = (240 * 50000 / (images_per_s + d) / 60 for d in (0.5, -0.5))
        assert low - 0.05 <= projected_min <= high + 0.05, (images_per_s, projected_min)


def test_the_real_data_gpu_script_runs_end_to_end_on_the_cpu_at_a_tiny_size(tmp_path):
    from test_data_sets import tiny_archive

    archive = tiny_archive(tmp_path, "tiny-cifar.tar.gz", per_class=6)
    env = {**__import__("os").environ, "KD_DATA": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_cifar100_real.py"), "--tiny", "--device", "cpu",
                           "--archive", str(archive), "--out", str(tmp_path / "gpu")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "gpu" / "cifar100-real.md").read_text()
    assert "teacher resnet56: 1 epochs" in text
    table = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[1:] == ["at", "cam_loss", "ccm", "ccm_kd", "fitnets", "kd", "vanilla"]
    runs = sorted((tmp_path / "gpu" / "runs").iterdir())
    assert [r.name.split("-2")[0] for r in runs] == ["gpu-cifar100-students", "gpu-cifar100-teacher"]
    assert all((r / "recipe.yaml").is_file() for r in runs)
