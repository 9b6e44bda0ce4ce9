"""Packaging hook: a built kd carries its pair registry, recipes and published numbers as package data
(kd/_home), so that an installed kd works outside the repository (see kd/home.py). All metadata is in
pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOME_FILES = ["teachers/pairs.yaml", "recipes/**/*.yaml", "results/published_cifar100.csv"]


class BuildWithHome(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "kd" / "_home"
        for pattern in HOME_FILES:
            for source in root.glob(pattern):
                destination = target / source.relative_to(root)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithHome})
