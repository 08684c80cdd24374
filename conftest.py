"""Collect only the chapters listed in _toc.yml, and run the whole-book tests last.

Order of a full `pytest` run: the package tests, then every chapter under nbval, then the
tests marked `book` (the full Jupyter Book build and the browser tests).
"""

import os
from pathlib import Path

from tools.book import chapter_notebooks

LISTED = {path.resolve() for path in chapter_notebooks()}


def pytest_configure(config) -> None:
    # A wrong answer in an exercise cell raises instead of printing "not yet" (the chapters'
    # kernels inherit this), so a checker that rejects its own solution fails the run.
    os.environ.setdefault("PGEMMA_EXERCISES", "strict")


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix == ".ipynb":
        return collection_path.resolve() not in LISTED
    return None


def pytest_collection_modifyitems(config, items) -> None:
    def stage(item) -> int:
        if item.get_closest_marker("book"):
            return 2
        return 1 if str(item.fspath).endswith(".ipynb") else 0

    items.sort(key=stage)  # stable: keeps the order within each stage
