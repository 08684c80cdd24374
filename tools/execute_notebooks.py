"""Execute chapters in place, saving outputs, timings and widget state (used by `make notebooks`).

Usage: python -m tools.execute_notebooks [book/NAME.ipynb ...]   (default: every listed chapter)
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tools.book import chapter_notebooks


def execute(path: Path) -> float:
    """Run `path` top to bottom in a fresh kernel from its own folder; return the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", record_timing=True,
                            store_widget_state=True, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(notebook, path)
    return seconds


def main(arguments: list[str]) -> None:
    paths = [Path(name) for name in arguments] or chapter_notebooks()
    for path in paths:
        print(f"{path}: {execute(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
