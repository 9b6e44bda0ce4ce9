#!/usr/bin/env python
"""Build results/published.md and results/published_cifar100.csv from the benchmark's published numbers.

    python bench/published_page.py [PATH/published_cifar100.csv]   (default: ../shared/fixtures/published_cifar100.csv)
"""
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kd.report.published import PUBLISHED, load_published, published_markdown  # noqa: E402

source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "fixtures" / "published_cifar100.csv"
shutil.copy(source, PUBLISHED)
text = published_markdown(load_published(), "python bench/published_page.py")
(ROOT / "results" / "published.md").write_text(text)
print(text)
