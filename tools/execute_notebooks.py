"""Execute chapters in place, saving outputs and timings (used by `make notebooks`).

Widget state is not saved: a widget's output carries its own HTML, with the figure of every state
(`pgemma.viz.widgets`), which the book shows; the saved state would only add weight to the page.

Usage: python -m tools.execute_notebooks [book/NAME.ipynb ...]   (default: every listed chapter)
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from tools.book import chapter_notebooks

CELL_TIMEOUT_SECONDS = 90  # a whole chapter must run in under 60 s
ATTEMPTS = 3  # nbclient occasionally never sees the reply after a cell with an Output widget


def execute(path: Path) -> float:
    """Run `path` top to bottom in a fresh kernel from its own folder; return the seconds taken."""
    for attempt in range(1, ATTEMPTS + 1):
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_SECONDS,
            kernel_name="python3",
            record_timing=True,
            store_widget_state=True,  # nbclient's Output-widget hook needs it while running
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        try:
            client.execute()
        except (CellTimeoutError, DeadKernelError, AssertionError) as error:
            print(f"{path}: attempt {attempt} stalled ({type(error).__name__}), starting again", flush=True)
            continue
        seconds = time.perf_counter() - start
        notebook.metadata.pop("widgets", None)  # not saved (see above)
        nbformat.write(notebook, path)
        return seconds
    raise RuntimeError(f"{path}: execution stalled {ATTEMPTS} times")


def main(arguments: list[str]) -> None:
    paths = [Path(name) for name in arguments] or chapter_notebooks()
    for path in paths:
        print(f"{path}: {execute(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
