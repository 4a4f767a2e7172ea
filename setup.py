"""The wheel carries the repository's conf/ and prompts/ inside the package (runner/_shipped/),
so an installed runner finds its configs and sample sets from any folder; a checkout reads the
top-level folders themselves (runner.config.shipped). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("conf", "prompts")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout
            return
        for name in SHIPPED:
            dest = Path(self.build_lib) / "runner" / "_shipped" / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(name, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPy})
