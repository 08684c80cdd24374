"""The whole book builds with Jupyter Book, warnings as errors, and every page shows its figures."""

import re
from pathlib import Path

import pytest

from tools.book import ROOT, chapter_files

HTML = ROOT / "_build" / "html"  # the session fixture built_book (tests/conftest.py) builds it


def page_of(path: Path) -> Path:
    return HTML / path.relative_to(ROOT).with_suffix(".html")


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_without_warnings_and_pages_show_figures(built_book):
    assert (built_book / "index.html").is_file()
    for path in chapter_files():
        page = page_of(path)
        assert page.is_file(), f"no page for {path.name}"
        html = page.read_text()
        if path.suffix == ".ipynb":
            images = re.findall(r'<img[^>]+src="([^"]+)"', html)
            assert images, f"{page.name} shows no figure"
            for source in images:
                if not source.startswith(("data:", "http")):
                    assert (page.parent / source).is_file(), f"{page.name}: missing image {source}"
            assert "pgemma" in html
