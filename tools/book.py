"""Facts about the book shared by the tests, the notebook runner and conftest.py."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def chapter_files(root: Path = ROOT) -> list[Path]:
    """Every file listed in `_toc.yml` (root first, then the chapters in order)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections", []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    files = []
    for name in names:
        candidates = [root / name] + [root / f"{name}{suffix}" for suffix in (".ipynb", ".md")]
        files.append(next((path for path in candidates if path.is_file()), root / name))
    return files


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks listed in `_toc.yml`, in reading order."""
    return [path for path in chapter_files(root) if path.suffix == ".ipynb"]


def repository_url(root: Path = ROOT) -> str:
    """The repository url, kept in one place: `_config.yml`."""
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]


def colab_cell_source(root: Path = ROOT) -> str:
    """The first cell of every chapter: installs pgemma in Colab when it is missing.

    `--no-deps` keeps Colab's own torch and ipywidgets; Colab already has every other
    dependency of pgemma.
    """
    return (
        "# Colab and other fresh environments: install pgemma (keeping the installed torch).\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("pgemma") is None:\n'
        f'    %pip install --quiet --no-deps "pgemma @ git+{repository_url(root)}"'
    )


def load_notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Chapters with nothing to move live: the fine-tuning comparison is a record of training runs.
WITHOUT_WIDGET = {"14_finetuning"}
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(home|work|tmp|root|Users|usr|opt|mnt|var)/")
