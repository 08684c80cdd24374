"""The notebook conventions of CONTRIBUTING.md, checked on every chapter listed in _toc.yml."""

import re
from datetime import datetime

import pytest

from tools.book import (
    ABSOLUTE_PATH,
    ROOT,
    WIDGET_MIME,
    WITHOUT_WIDGET,
    cell_source,
    chapter_files,
    chapter_notebooks,
    colab_cell_source,
    load_notebook,
)

NOTEBOOKS = chapter_notebooks()
DOWNLOAD = re.compile(r"urlretrieve|requests\.get|urlopen|hf_hub_download|snapshot_download|!wget|!curl")
TIME_LIMIT_SECONDS = 60
BUILDS_ON = "**Builds on:**"


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def cell_seconds(cell: dict) -> float:
    timing = cell["metadata"].get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if start is None or end is None:
        return 0.0
    return (
        datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    ).total_seconds()


def test_every_toc_entry_exists_and_every_chapter_is_listed():
    listed = chapter_files()
    assert listed[0].name == "intro.md"
    missing = [str(path.relative_to(ROOT)) for path in listed if not path.is_file()]
    assert not missing, f"listed in _toc.yml but missing: {missing}"
    unlisted = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.ipynb") if p not in listed)
    assert not unlisted, f"notebooks in book/ that _toc.yml does not list: {unlisted}"
    assert NOTEBOOKS, "the book has no chapter notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_by_naming_the_earlier_chapters_it_builds_on(path):
    # "# Title", then "**Builds on:** chapter 5 (multi-head attention), chapter 8 (RoPE)."
    first = next(cell for cell in load_notebook(path)["cells"] if cell["cell_type"] == "markdown")
    paragraphs = cell_source(first).split("\n\n")
    assert paragraphs[0].startswith("# ") and len(paragraphs) > 1 and paragraphs[1].startswith(BUILDS_ON), (
        f"{path.name}: the paragraph after the title must start with {BUILDS_ON!r}"
    )
    named = [int(number) for number in re.findall(r"\bchapter (\d+)\b", paragraphs[1])]
    assert len(named) == len(re.findall(r"\d+", paragraphs[1])), f"{path.name}: write each as 'chapter N (title)'"
    own = int(path.name.split("_", 1)[0])
    assert all(number < own for number in named), f"{path.name}: builds on chapters {named}, not all before {own}"
    assert named or own == 1, f"{path.name}: name the earlier chapters it builds on"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_installs_pgemma_in_colab(path):
    first = code_cells(load_notebook(path))[0]
    assert cell_source(first) == colab_cell_source(), f"{path.name}: first cell is not the Colab cell"
    assert "remove-cell" in first["metadata"].get("tags", []), f"{path.name}: tag the Colab cell remove-cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_in_order_with_saved_outputs_and_no_errors(path):
    cells = [c for c in code_cells(load_notebook(path)) if cell_source(c).strip()]
    counts = [cell["execution_count"] for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"
    errors = [out.get("ename") for cell in cells for out in cell["outputs"] if out["output_type"] == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    assert any("image/png" in out.get("data", {}) for cell in cells for out in cell["outputs"]), (
        f"{path.name}: no figure saved"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_seeded_portable_and_offline(path):
    sources = [cell_source(cell) for cell in code_cells(load_notebook(path))]
    text = "\n".join(sources)
    assert "torch.manual_seed(" in text, f"{path.name}: seed torch (torch.manual_seed)"
    assert "import pgemma" in text or "from pgemma" in text, f"{path.name}: never imports pgemma"
    for source in sources:
        assert not ABSOLUTE_PATH.search(source), f"{path.name}: absolute path in {source[:60]!r}"
        assert not DOWNLOAD.search(source), f"{path.name}: download in {source[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_under_a_minute(path):
    seconds = sum(cell_seconds(cell) for cell in code_cells(load_notebook(path)))
    assert 0 < seconds < TIME_LIMIT_SECONDS, f"{path.name}: saved run took {seconds:.1f} s"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_cell_tags_not_comments_on_the_page(path):
    marked = [cell_source(c).splitlines()[0] for c in code_cells(load_notebook(path)) if "# NBVAL_" in cell_source(c)]
    assert not marked, f"{path.name}: use the cells' nbval-... tags instead of {marked}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_widgets_have_a_static_twin_and_ignored_outputs(path):
    notebook = load_notebook(path)
    cells = code_cells(notebook)
    widget_cells = [c for c in cells if any(WIDGET_MIME in out.get("data", {}) for out in c["outputs"])]
    if path.stem in WITHOUT_WIDGET:
        assert not widget_cells, f"{path.name}: has a widget; remove it from WITHOUT_WIDGET"
        return
    assert widget_cells, f"{path.name}: no widget"
    static_text = "\n".join(cell_source(c) for c in cells if c not in widget_cells)
    for cell in widget_cells:
        source = cell_source(cell)
        assert "interactive_figure(" in source, f"{path.name}: build widgets with interactive_figure"
        ignored = "nbval-ignore-output" in cell["metadata"].get("tags", [])
        assert ignored, f"{path.name}: tag widget cells nbval-ignore-output"
        drawn = re.findall(r"\b(plot_\w+)\(", source)
        assert drawn and all(name + "(" in static_text for name in drawn), (
            f"{path.name}: the widget's figure {drawn} is not also drawn statically"
        )
    markdown = "\n".join(cell_source(c) for c in notebook["cells"] if c["cell_type"] == "markdown")
    assert "live" in markdown and "Colab" in markdown, f"{path.name}: say the controls are live in Colab"
    pages = [out["data"] for c in widget_cells for out in c["outputs"] if WIDGET_MIME in out.get("data", {})]
    assert all("pgemma-widget" in "".join(data.get("text/html", "")) for data in pages), (
        f"{path.name}: a widget output has no HTML for the book (use make notebooks)"
    )
    assert "widgets" not in notebook["metadata"], f"{path.name}: widget state saved, unused by the book"
