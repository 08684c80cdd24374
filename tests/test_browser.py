"""The built book in a real browser (headless Chromium), served on loopback with no network.

For every page of `_toc.yml`: no JavaScript error, no request leaves 127.0.0.1 (MathJax is served
by the book, and each widget carries its own script), every image loads, every formula is typeset,
every internal link and anchor resolves, the launch buttons open this chapter's notebook in Colab
and Binder, and the page with everything it loads weighs under 5 MB and loads in under 2 s. Every
widget is drawn with all its controls, and moving any control shows the figure pgemma drew for
the new state. A screenshot of each page, and of each widget in a changed state, is saved under
`_build/screenshots/` for a human to look at; `_build/screenshots/page_weights.md` lists the
weight and load time of every page.

Chromium comes from the system (Debian's `chromium`, installed by `.ci/run`), driven by the
`playwright` package with `executable_path` (Playwright's own browser download is not used).
Without Chromium these tests are skipped locally, and fail in CI (where CI=true).
"""

from __future__ import annotations

import functools
import http.server
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

from tools.book import ROOT, WITHOUT_WIDGET, chapter_files

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
WIDGET = ".pgemma-widget"  # the HTML that pgemma.viz.widgets saves with each widget's output
MAX_PAGE_BYTES = 5_000_000
MAX_LOAD_MS = 2_000
LAUNCH_HOSTS = {"colab": "https://colab.research.google.com/github/", "binder": "https://mybinder.org/v2/gh/"}


def mask_texts(tokens: int) -> list[str]:
    """Chapter 7 highlights query 2 (clipped to the last token) of a row of `tokens` tokens."""
    return [f"query {min(2, tokens - 1)} (", f"of {tokens} keys"]


# What each chapter's figure prints for a state, from the values its controls show (description ->
# label): the widget's caption carries the figure's own titles, so these prove the figure shown is
# the one drawn for that state.
EXPECTED: dict[str, Callable[[dict[str, str]], list[str]]] = {
    "01_tensors_patches_tokens": lambda v: [
        f"patch {v['patch size']}x{v['patch size']}: {224 // int(v['patch size'])} x {224 // int(v['patch size'])}"
    ],
    "02_contrastive_learning": lambda v: [f"t = {float(v['temperature t']):.1f}, b = {float(v['bias b']):.1f}"],
    "03_normalization": lambda v: [
        f"{v['norm']}, batch of {v['batch size']}, inputs x {'5 + 3' if v['inputs'] == '5 x + 3' else '1 + 0'}"
    ],
    "04_cnn_vs_vit": lambda v: [f"pixel ({v['pixel row']}, {v['pixel column']})", f"layer {v['layer']}"],
    "05_multi_head_attention": lambda v: [f"head {v['head']}", f"query {v['query position']} (token"],
    "06_kv_cache": lambda v: [
        f"writing token {v['generated token']} {'with' if v['cache'] == 'with the cache' else 'without'} the cache"
    ],
    "07_attention_masks": lambda v: mask_texts(sum(int(label) for label in v.values())),
    "08_rope": lambda v: [f"pair {v['pair i']}, position {v['position m']}:"],
    "09_transformer_blocks": lambda v: [f"(position {v['position']})"],
    "10_processor": lambda v: [f"seed {v['scene seed']}:"],
    "11_paligemma": lambda v: [
        f"held-out scene {v['held-out scene']}",
        f"({'mean over layers' if v['decoder layer'] == 'mean' else 'layer ' + v['decoder layer']}, mean over heads)",
    ],
    "12_decoding": lambda v: [v["step"], f"T = {float(v['temperature']):g}"],
    "13_paligemma2": lambda v: [f"sliding layers: window {v['window']}", f"query {v['query']} ("],
}

SOURCES = chapter_files()
PAGES = {source.relative_to(ROOT).with_suffix(".html").as_posix(): source for source in SOURCES}
NOTEBOOK_PAGES = [page for page, source in PAGES.items() if source.suffix == ".ipynb"]
WIDGET_PAGES = [page for page in NOTEBOOK_PAGES if PAGES[page].stem not in WITHOUT_WIDGET]


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
    typeset: int = 0  # formulas MathJax typeset (an mjx-math inside; a lazy placeholder has none)
    typeset_on_scroll: bool = False  # the last formula in the layout got typeset when scrolled to
    math_errors: int = 0  # TeX errors MathJax drew (mjx-merror)
    widgets: int = 0  # pgemma widgets in the page
    drawn_widgets: int = 0  # of them, drawn with a non-zero size and a loaded figure
    controls: list[int] = field(default_factory=list)  # controls drawn per widget
    saved_controls: list[int] = field(default_factory=list)  # controls in each widget's saved states
    bytes: int = 0  # the page and everything it loaded
    load_ms: float = 0.0  # from the request to the end of the load event
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


def open_page(browser, site: str, visit: Visit, responses: list | None = None):
    """A fresh browser context on `visit.url` that records errors, requests leaving the site, failures."""
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
    if responses is not None:
        page.on("response", lambda response: responses.append(response))
    page.goto(visit.url, wait_until="load")
    return context, page


def browse(browser, site: str, built_book: Path, page_path: str) -> Visit:
    visit = Visit(url=site + page_path)
    responses = []
    context, page = open_page(browser, site, visit, responses)
    visit.load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")

    # MathJax 3 typesets after start-up, each formula as it scrolls into view (ui/lazy). The last
    # formula in the layout is scrolled to, as a reader would, and must get typeset; then the rest
    # (hidden ones too) are typeset at once, so that every formula is checked below.
    visit.typeset_on_scroll = page.evaluate("""async () => {
        if (!(window.MathJax && MathJax.startup)) return false;
        await MathJax.startup.promise;
        const shown = Array.from(document.querySelectorAll('.math')).filter(e => e.offsetParent !== null);
        if (!shown.length) return false;
        const last = shown[shown.length - 1];
        last.scrollIntoView();
        for (let frame = 0; frame < 300 && !last.querySelector('mjx-math'); frame++)
            await new Promise(done => requestAnimationFrame(done));
        const typeset = last.querySelector('mjx-math') !== null;
        await MathJax.startup.document.lazyTypesetAll();
        window.scrollTo(0, 0);
        return typeset;
    }""")
    page.evaluate("""async () => {
        for (const image of document.images) image.loading = 'eager';
        await Promise.all(Array.from(document.images, image => image.complete ? null :
            new Promise(done => { image.onload = image.onerror = done; })));
    }""")
    page.wait_for_timeout(300)  # late console errors

    facts = page.evaluate(
        """(widget) => {
        const visible = element => element.getBoundingClientRect().width > 0 && element.getBoundingClientRect().height > 0;
        const maths = Array.from(document.querySelectorAll('.math'));
        const widgets = Array.from(document.querySelectorAll(widget));
        return {
            images: Array.from(document.images, image => [image.currentSrc || image.src, image.naturalWidth]),
            static_figures: Array.from(document.querySelectorAll('.cell_output img'))
                .filter(image => !image.closest(widget)).length,
            math: maths.length,
            typeset: maths.filter(element => element.querySelector('mjx-math')).length,
            math_errors: document.querySelectorAll('mjx-merror').length,
            widgets: widgets.length,
            drawn_widgets: widgets.filter(w => visible(w) && w.querySelector('img').naturalWidth > 0).length,
            controls: widgets.map(w => w.querySelectorAll('[data-control]').length),
            saved_controls: widgets.map(w => JSON.parse(w.querySelector('.pgemma-states').textContent).sizes.length),
            links: Array.from(document.querySelectorAll('a[href]'), anchor => anchor.href),
            text: document.body.innerText,
        };
    }""",
        WIDGET,
    )
    for name, value in facts.items():
        setattr(visit, name, [tuple(item) for item in value] if name == "images" else value)
    visit.bytes = sum(len(response.body()) for response in responses if response.status == 200)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{stem_of(page_path)}.png"), full_page=True)
    context.close()
    return visit


def stem_of(page_path: str) -> str:
    return page_path.removesuffix(".html").replace("/", "__")


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
    assert seen.math == 0 or seen.typeset_on_scroll, f"{page_path}: a formula scrolled into view stayed untypeset"
    assert seen.math_errors == 0, f"{page_path}: {seen.math_errors} TeX errors"
    if PAGES[page_path].suffix == ".ipynb":
        assert seen.math > 0, f"{page_path}: a chapter explains its idea with math, and this one has none"


def cold_load_ms(browser, site: str, page_path: str) -> float:
    """The load time of `page_path` in a fresh context: an empty cache, as a first visit."""
    context, page = open_page(browser, site, Visit(url=site + page_path))
    try:
        return page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    finally:
        context.close()


@pytest.mark.parametrize("page_path", PAGES)
def test_page_weighs_under_5_mb_and_loads_in_under_2_s(visit, browser, site, page_path):
    seen = visit(page_path)
    assert seen.bytes < MAX_PAGE_BYTES, f"{page_path}: the page and what it loads weigh {seen.bytes:,} bytes"
    # A shared machine can stall one load; the page is slow only if three cold loads all are.
    load_times = [seen.load_ms]
    while min(load_times) >= MAX_LOAD_MS and len(load_times) < 3:
        load_times.append(cold_load_ms(browser, site, page_path))
    assert min(load_times) < MAX_LOAD_MS, f"{page_path}: cold loads took {[round(t) for t in load_times]} ms"


def test_page_weights_table(visit):
    """Write (and print, with pytest -s) every page's weight and load time."""
    rows = [f"| {page} | {visit(page).bytes / 1e6:.2f} | {visit(page).load_ms:.0f} |" for page in PAGES]
    table = "\n".join(["| page | MB | load ms |", "|---|---|---|", *rows])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "page_weights.md").write_text(table + "\n")
    print(table)
    assert all(visit(page).bytes > 0 for page in PAGES)


@pytest.mark.parametrize("page_path", PAGES)
def test_no_ipywidget_state_or_manager_in_the_page(built_book, page_path):
    """Widgets are HTML with their own script: a saved ipywidget state or widget manager is dead weight."""
    page = (built_book / page_path).read_text()
    assert WIDGET_STATE not in page, f"{page_path}: saved ipywidget state (re-run make notebooks)"
    assert "embed-amd" not in page and "require.js" not in page, f"{page_path}: loads the ipywidgets manager"


@pytest.mark.parametrize("page_path", WIDGET_PAGES)
def test_every_widget_is_drawn_next_to_a_static_figure(visit, page_path):
    seen = visit(page_path)
    assert seen.widgets > 0, f"{page_path}: no widget in the page (run make notebooks)"
    assert seen.drawn_widgets == seen.widgets, f"{page_path}: {seen.drawn_widgets} of {seen.widgets} widgets drawn"
    assert seen.controls == seen.saved_controls, (
        f"{page_path}: controls drawn per widget {seen.controls}, in the saved states {seen.saved_controls}"
    )
    assert seen.static_figures >= seen.widgets, (
        f"{page_path}: {seen.static_figures} static figures for {seen.widgets} widgets"
    )
    assert re.search(r"live[^.]{0,80}\bColab\b", seen.text), (
        f"{page_path}: the page does not say that the controls are live in Colab or locally"
    )


def widget_shows(widget) -> dict:
    """The state a widget shows: its number, figure, caption, and the value next to each control."""
    widget.evaluate("""async w => { const image = w.querySelector('img'); if (!image.complete)
        await new Promise(done => { image.onload = image.onerror = done; }); }""")
    return widget.evaluate("""w => ({
        state: w.dataset.state,
        src: w.querySelector('img').src,
        width: w.querySelector('img').naturalWidth,
        alt: w.querySelector('img').alt,
        caption: w.querySelector('.pgemma-caption').textContent,
        values: Object.fromEntries(Array.from(w.querySelectorAll('[data-control]'), c => [
            c.getAttribute('aria-label'),
            c.tagName === 'SELECT' ? c.options[c.selectedIndex].text : c.parentNode.querySelector('output').textContent,
        ])),
    })""")


def moves(control) -> list[int]:
    """Positions to move a control to: two other values of a slider (there and back if it has only
    two), another option of a dropdown."""
    current = int(control.input_value())
    if control.evaluate("c => c.tagName") == "SELECT":
        return [1 if current == 0 else 0]
    others = [p for p in dict.fromkeys([0, int(control.get_attribute("max")), 1]) if p != current]
    return others[:2] if len(others) >= 2 else [others[0], current]


def move(page, control, position: int) -> None:
    """Move a control as a reader does: arrow keys on a slider, a choice in a dropdown."""
    if control.evaluate("c => c.tagName") == "SELECT":
        control.select_option(str(position))
        return
    control.focus()
    steps = position - int(control.input_value())
    for _ in range(abs(steps)):
        page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")


@pytest.mark.parametrize("page_path", WIDGET_PAGES)
def test_every_control_of_every_widget_shows_the_figure_of_its_state(browser, site, page_path):
    expected = EXPECTED[Path(page_path).stem]
    visit = Visit(url=site + page_path)
    context, page = open_page(browser, site, visit)
    widgets = page.locator(WIDGET).all()
    assert widgets, f"{page_path}: no widget"
    for index, widget in enumerate(widgets):
        for control in widget.locator("[data-control]").all():
            name = control.get_attribute("aria-label")
            for position in moves(control):
                before = widget_shows(widget)
                move(page, control, position)
                after = widget_shows(widget)
                where = f"{page_path}, widget {index + 1}, {name!r} to position {position}"
                assert after["state"] != before["state"] and after["src"] != before["src"], f"{where}: figure unchanged"
                assert after["width"] > 0, f"{where}: the figure does not load"
                assert after["alt"] == after["caption"], f"{where}: alt text and caption differ"
                for text in [f"{description} = {label}" for description, label in after["values"].items()]:
                    assert text in after["caption"], f"{where}: {text!r} not in {after['caption']!r}"
                for text in expected(after["values"]):
                    assert text in after["caption"], f"{where}: the figure should show {text!r}: {after['caption']!r}"
        widget.scroll_into_view_if_needed()
        widget.screenshot(path=str(SCREENSHOTS / f"{stem_of(page_path)}__widget{index + 1}.png"))
    context.close()
    assert not visit.errors, f"{page_path}: JavaScript errors:\n" + "\n".join(visit.errors)
    assert not visit.outside, f"{page_path}: requests leave the book:\n" + "\n".join(visit.outside)


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


def test_icons_are_drawn_by_the_theme_web_fonts(browser, site):
    """The theme's icons come from Font Awesome's web fonts, as its stylesheet says; the 1.5 MB
    script that redraws them as SVG is left out of every page (tools/offline_assets.py)."""
    page_path = next(iter(PAGES))
    visit = Visit(url=site + page_path)
    context, page = open_page(browser, site, visit)
    try:
        assert "fontawesome.js" not in page.content(), f"{page_path}: still loads fontawesome.js"
        drawn = page.evaluate("""async () => {
            await document.fonts.ready;
            const icon = document.querySelector('.fa-solid, .fas');
            const before = getComputedStyle(icon, '::before');
            const loaded = [...document.fonts].filter(f => f.family.includes('Font Awesome') && f.status === 'loaded');
            return {family: before.fontFamily, content: before.content, loaded: loaded.length};
        }""")
    finally:
        context.close()
    assert "Font Awesome" in drawn["family"] and drawn["content"] not in ("none", "normal", '""'), drawn
    assert drawn["loaded"] >= 1, f"{page_path}: no Font Awesome web font was loaded: {drawn}"
