"""Published CIFAR-100 numbers: the committed copy, results/published.md, and report --published."""
import filecmp

import pandas as pd

from conftest import ROOT, run_cli, shared_file
from kd.report.published import PUBLISHED, load_published, published_wide


def test_committed_copy_equals_the_published_fixture_and_the_page_lists_every_pair():
    assert filecmp.cmp(PUBLISHED, shared_file("fixtures", "published_cifar100.csv"), shallow=False)
    wide = published_wide(load_published())
    assert len(wide) == 13
    page = (ROOT / "results" / "published.md").read_text()
    assert "not ours" in page and "CRD benchmark README" in page
    for pair in wide["pair"]:
        assert f"| {pair} |" in page
    assert ("| resnet32x4->resnet8x4 | 79.42 | 72.50 | 73.33 | 73.50 | 73.44 | 72.94 | 72.97 | 73.09 | 71.90 | 73.64 | "
            "73.17 | 72.86 | 72.62 | 73.30 | 75.51 | 76.32 |") in page


def fake_cifar100_run(root):
    run = root / "cifar100-resnet32x4-resnet8x4-1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\npair: resnet32x4-resnet8x4\nteacher: resnet32x4\nstudent: resnet8x4\n"
                                     "dataset: cifar100\nmethods: [vanilla, kd, ccm]\nseeds: [0]\nepochs: 2\n"
                                     f"data_root: {root / 'nowhere'}\n")
    summary = []
    for method, top1 in (("vanilla", 72.0), ("kd", 73.5), ("ccm", 74.0)):
        (run / f"{method}-s0").mkdir()
        pd.DataFrame({"epoch": [1, 2], "lr": [0.05, 0.05], "loss": [2.0, 1.5], "train_top1": [50.0, 60.0],
                      "test_top1": [top1 - 5, top1], "test_top5": [90.0, 92.0], "images_per_s": [100.0, 100.0],
                      "seconds": [1.0, 1.0]}).to_csv(run / f"{method}-s0" / "metrics.csv", index=False)
        summary.append({"method": method, "seed": 0, "teacher_top1": 79.0, "extra_params": 0})
    pd.DataFrame(summary).to_csv(run / "summary.csv", index=False)
    return run


def test_report_sets_our_runs_beside_the_published_numbers_without_the_data(tmp_path):
    run = fake_cifar100_run(tmp_path)
    result = run_cli("report", str(run), "--published", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "published.md").read_text()
    assert "| teacher | 79.00 | 79.42 |" in text
    assert "| kd | 73.50 ± 0.00 | 73.33 |" in text
    assert "| ccm | 74.00 ± 0.00 | - |" in text
    assert "| crd | - | 75.51 |" in text
    assert (tmp_path / "out" / "table.md").is_file() and (tmp_path / "out" / "curves.png").is_file()


def test_a_published_method_beyond_the_benchmark_columns_is_kept_after_them():
    frame = pd.DataFrame({"pair": ["a->b"] * 3, "method": ["zeta_kd", "kd", "teacher"], "top1": [70.0, 71.0, 75.0]})
    assert list(published_wide(frame).columns) == ["pair", "teacher", "kd", "zeta_kd"]
