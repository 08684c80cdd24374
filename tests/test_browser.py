"""The built book in a real browser (headless Chromium), served on loopback with no network.

For every page of `_toc.yml`: no JavaScript error, no request leaves 127.0.0.1 (the widget manager,
require.js and MathJax are served by the book), every image loads, every formula is typeset,
every saved widget is drawn with all its sliders, every internal link and anchor resolves, and
the launch buttons open this chapter's notebook in Colab and Binder. A screenshot of each page
(and of each widget) is saved under `_build/screenshots/` for a human to look at.

Chromium comes from the system (Debian's `chromium`, installed by `.ci/run`), driven by the
`playwright` package with `executable_path` (Playwright's own browser download is not used).
Without Chromium these tests are skipped locally, and fail in CI (where CI=true).
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tools.book import ROOT, chapter_files

pytestmark = [pytest.mark.book, pytest.mark.slow]

SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
# Flags for a sandboxed, offline machine: no first-run or background connections to Google.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SLIDERS = ".widget-slider, .jupyter-widget-slider"
CORE_MODULES = {"@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output"}
LAUNCH_HOSTS = {"colab": "https://colab.research.google.com/github/", "binder": "https://mybinder.org/v2/gh/"}

SOURCES = chapter_files()
PAGES = {source.relative_to(ROOT).with_suffix(".html").as_posix(): source for source in SOURCES}
NOTEBOOK_PAGES = [page for page, source in PAGES.items() if source.suffix == ".ipynb"]


def missing_browser(reason: str) -> None:
    """Fail in CI, where the browser must be installed; skip on a machine without it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run; .ci/run installs Chromium)")
    pytest.skip(f"{reason}: install Chromium to run the browser tests (Debian: apt-get install chromium)")


def chromium_path() -> str | None:
    configured = os.environ.get("PGEMMA_CHROMIUM")
    if configured:
        return configured
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


@dataclass
class Visit:
    """What the browser saw on one page."""

    url: str
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    outside: list[str] = field(default_factory=list)  # requests to hosts other than the local server
    failed: list[str] = field(default_factory=list)  # local requests that failed or answered >= 400
    images: list[tuple[str, int]] = field(default_factory=list)  # (src, naturalWidth)
    static_figures: int = 0  # images in cell outputs outside widgets
    math: int = 0  # formulas on the page (Sphinx's .math elements)
    typeset: int = 0  # formulas MathJax replaced by an mjx-container
    math_errors: int = 0  # TeX errors MathJax drew (mjx-merror)
    saved_views: int = 0  # widget views saved in the page
    drawn_views: int = 0  # widget areas the widget manager drew, with a non-zero size
    saved_sliders: int = 0  # slider models in the saved widget state
    drawn_sliders: int = 0  # slider elements in the page
    links: list[str] = field(default_factory=list)  # absolute urls of every <a href>
    text: str = ""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="session")
def site(built_book: Path) -> Iterator[str]:
    """The built book served on 127.0.0.1 (not file://, so that scripts load as on a web server)."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(built_book))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    if executable is None:
        missing_browser("Chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_browser("the playwright package is not installed (it is in requirements.txt)")
    with sync_playwright() as playwright:
        # Playwright starts Chromium headless with a fresh, temporary --user-data-dir.
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def saved_models(page_html: str) -> list[dict]:
    """Every widget model in a page's embedded widget state."""
    blocks = re.findall(rf'<script type="{re.escape(WIDGET_STATE)}">(.*?)</script>', page_html, re.S)
    return [model for block in blocks for model in json.loads(html.unescape(block))["state"].values()]


def saved_widgets(page_html: str) -> tuple[int, int]:
    """(widget views, slider models) saved in a page."""
    sliders = sum(model["model_name"].endswith("SliderModel") for model in saved_models(page_html))
    return page_html.count(f'type="{WIDGET_VIEW}"'), sliders


def browse(browser, site: str, built_book: Path, page_path: str) -> Visit:
    visit = Visit(url=site + page_path)
    visit.saved_views, visit.saved_sliders = saved_widgets((built_book / page_path).read_text())
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)

    def route(request_route) -> None:  # the machine has no network: make that explicit
        if request_route.request.url.startswith(site):
            request_route.continue_()
        else:
            visit.outside.append(request_route.request.url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on(
        "console",
        lambda message: (
            message.type == "error" and visit.errors.append(f"console: {message.text} ({message.location.get('url')})")
        ),
    )
    page.on("pageerror", lambda error: visit.errors.append(f"uncaught: {error}"))
    page.on(
        "requestfailed",
        lambda request: request.url.startswith(site) and visit.failed.append(f"{request.url}: {request.failure}"),
    )
    page.on(
        "response",
        lambda response: response.status >= 400 and visit.failed.append(f"{response.url}: HTTP {response.status}"),
    )
    page.goto(visit.url, wait_until="load")

    # MathJax 3 typesets after start-up; widgets are drawn after the load event.
    page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
    if visit.saved_views:
        try:
            page.wait_for_function(
                """([views, sliders, selector]) => document.querySelectorAll('.widget-subarea').length >= views
                   && document.querySelectorAll(selector).length >= sliders""",
                arg=[visit.saved_views, visit.saved_sliders, SLIDERS],
            )
        except Exception as error:  # reported by the widget test, with the counts
            visit.errors.append(f"widgets not drawn in {TIMEOUT_MS} ms: {type(error).__name__}")
    page.evaluate("""async () => {
        for (const image of document.images) image.loading = 'eager';
        await Promise.all(Array.from(document.images, image => image.complete ? null :
            new Promise(done => { image.onload = image.onerror = done; })));
    }""")
    page.wait_for_timeout(300)  # late console errors

    facts = page.evaluate(
        """(sliders) => {
        const visible = element => element.getBoundingClientRect().width > 0 && element.getBoundingClientRect().height > 0;
        const maths = Array.from(document.querySelectorAll('.math'));
        return {
            images: Array.from(document.images, image => [image.currentSrc || image.src, image.naturalWidth]),
            static_figures: Array.from(document.querySelectorAll('.cell_output img'))
                .filter(image => !image.closest('.widget-subarea')).length,
            math: maths.length,
            typeset: maths.filter(element => element.querySelector('mjx-container')).length,
            math_errors: document.querySelectorAll('mjx-merror').length,
            drawn_views: Array.from(document.querySelectorAll('.widget-subarea')).filter(visible).length,
            drawn_sliders: document.querySelectorAll(sliders).length,
            links: Array.from(document.querySelectorAll('a[href]'), anchor => anchor.href),
            text: document.body.innerText,
        };
    }""",
        SLIDERS,
    )
    for name, value in facts.items():
        setattr(visit, name, [tuple(item) for item in value] if name == "images" else value)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = page_path.removesuffix(".html").replace("/", "__")
    page.screenshot(path=str(SCREENSHOTS / f"{stem}.png"), full_page=True)
    for index, area in enumerate(page.locator(".widget-subarea").all()):
        area.scroll_into_view_if_needed()
        area.screenshot(path=str(SCREENSHOTS / f"{stem}__widget{index + 1}.png"))
    context.close()
    return visit


@pytest.fixture(scope="session")
def visit(browser, site: str, built_book: Path) -> Callable[[str], Visit]:
    """page path -> what the browser saw there (each page is opened once per session)."""
    seen: dict[str, Visit] = {}

    def get(page_path: str) -> Visit:
        if page_path not in seen:
            seen[page_path] = browse(browser, site, built_book, page_path)
        return seen[page_path]

    return get


@pytest.mark.parametrize("page_path", PAGES)
def test_no_javascript_errors_and_nothing_from_the_network(visit, page_path):
    seen = visit(page_path)
    assert not seen.errors, f"{page_path}: JavaScript errors:\n" + "\n".join(seen.errors)
    assert not seen.outside, f"{page_path}: requests leave the book (offline they fail):\n" + "\n".join(seen.outside)
    assert not seen.failed, f"{page_path}: failed requests:\n" + "\n".join(seen.failed)


@pytest.mark.parametrize("page_path", PAGES)
def test_every_image_loads(visit, page_path):
    seen = visit(page_path)
    broken = [source for source, width in seen.images if width == 0]
    assert not broken, f"{page_path}: images that did not load: {broken}"


@pytest.mark.parametrize("page_path", PAGES)
def test_mathjax_typesets_every_formula(visit, page_path):
    seen = visit(page_path)
    assert seen.typeset == seen.math, f"{page_path}: MathJax typeset {seen.typeset} of {seen.math} formulas"
    assert seen.math_errors == 0, f"{page_path}: {seen.math_errors} TeX errors"
    if PAGES[page_path].suffix == ".ipynb":
        assert seen.math > 0, f"{page_path}: a chapter explains its idea with math, and this one has none"


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_widgets_are_core_widgets(built_book, page_path):
    """The book ships only the core widget modules; they exist in ipywidgets 7.7 (Colab) and 8."""
    modules = {model["model_module"] for model in saved_models((built_book / page_path).read_text())}
    assert modules <= CORE_MODULES, f"{page_path}: widgets from {modules - CORE_MODULES}"


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_every_widget_is_drawn_next_to_a_static_figure(visit, page_path):
    seen = visit(page_path)
    assert seen.saved_views > 0, f"{page_path}: no widget saved in the page (run make notebooks)"
    assert seen.drawn_views == seen.saved_views, f"{page_path}: {seen.drawn_views} of {seen.saved_views} widgets drawn"
    assert seen.drawn_sliders == seen.saved_sliders, (
        f"{page_path}: {seen.drawn_sliders} sliders drawn, {seen.saved_sliders} in the saved widget state"
    )
    assert seen.static_figures >= seen.saved_views, (
        f"{page_path}: {seen.static_figures} static figures for {seen.saved_views} widgets"
    )
    assert re.search(r"live[^.]{0,80}\bColab\b", seen.text), (
        f"{page_path}: the page does not say that the controls are live in Colab or locally"
    )


def target_exists(built_book: Path, url: str) -> str | None:
    """None if an internal url resolves (its file, and its #anchor in that file), else the problem."""
    parts = urlsplit(url)
    path = built_book / unquote(parts.path).lstrip("/")
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        return f"{url}: no such file"
    if parts.fragment and path.suffix == ".html":
        ids = set(re.findall(r'\bid="([^"]+)"', path.read_text()))
        if unquote(parts.fragment) not in ids:
            return f"{url}: no element with id {parts.fragment!r}"
    return None


@pytest.mark.parametrize("page_path", PAGES)
def test_every_internal_link_resolves(visit, built_book, site, page_path):
    seen = visit(page_path)
    internal = sorted({link for link in seen.links if link.startswith(site)})
    assert internal, f"{page_path}: no internal links at all (no navigation?)"
    problems = [problem for link in internal if (problem := target_exists(built_book, link[len(site) - 1 :]))]
    assert not problems, f"{page_path}: broken internal links:\n" + "\n".join(problems)


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_launch_buttons_open_this_chapter(visit, page_path):
    seen = visit(page_path)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repository = urlsplit(config["repository"]["url"]).path.strip("/")  # owner/name
    branch = config["repository"]["branch"]
    notebook = PAGES[page_path].relative_to(ROOT).as_posix()
    colab = [link for link in seen.links if link.startswith(LAUNCH_HOSTS["colab"])]
    assert colab == [f"{LAUNCH_HOSTS['colab']}{repository}/blob/{branch}/{notebook}"], (
        f"{page_path}: Colab links {colab}"
    )
    opened = colab[0].split(f"/blob/{branch}/", 1)[1]
    assert (ROOT / opened).is_file(), f"{page_path}: Colab would open {opened}, which is not in the repository"
    binder = [link for link in seen.links if link.startswith(LAUNCH_HOSTS["binder"])]
    assert binder and all(
        link.startswith(f"{LAUNCH_HOSTS['binder']}{repository}/{branch}?") and link.endswith(f"urlpath=tree/{notebook}")
        for link in binder
    ), f"{page_path}: Binder links {binder}"


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_chapter_cites_the_references_page(visit, page_path):
    seen = visit(page_path)
    citations = [link for link in seen.links if "references.html#" in link]
    assert citations, f"{page_path}: cites no paper (use {{cite:p}} with a key from book/references.bib)"


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_colab_install_cell_is_hidden(visit, page_path):
    seen = visit(page_path)
    assert "Colab and other fresh environments" not in seen.text, f"{page_path}: the Colab cell is shown"
    assert "pip install" not in seen.text, f"{page_path}: an install command is shown"


def test_screenshots_of_every_page(visit):
    for page_path in PAGES:
        visit(page_path)
        stem = page_path.removesuffix(".html").replace("/", "__")
        shot = SCREENSHOTS / f"{stem}.png"
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page_path}"


def test_intro_shows_the_pgemma_version_and_build_date(built_book):
    import pgemma

    text = re.sub(r"<[^>]+>", "", (built_book / "book" / "intro.html").read_text())
    assert re.search(rf"Built on \d{{4}}-\d{{2}}-\d{{2}} from\s+pgemma\s+{re.escape(pgemma.__version__)}", text), (
        "the intro page does not show the pgemma version and the build date"
    )
