"""Sphinx extension for the book: pages that work with no network, and a dated intro page.

By default Sphinx loads MathJax from a CDN: offline, math stays raw TeX. `make book` and
`make test` run `npm ci`, which installs the version locked in `package-lock.json` into
`node_modules/`; this extension copies the files the pages use into the built site, under
`_static/mathjax/`, where `_config.yml` points `mathjax_path`. They never live in a source
`_static/` folder, from which Jupyter Book would add every script to every page. (Widgets need no
script from here: each carries its own, inlined by `pgemma.viz.widgets`.)

It also:
- sets the substitutions `{{ pgemma_version }}` and `{{ build_date }}` used by the intro page
  (the date honours SOURCE_DATE_EPOCH, for reproducible builds);
- drops repeated inline scripts from each page: sphinx-thebe and sphinx-togglebutton register
  theirs twice, and a second `const THEBE_JS_URL` declaration is a JavaScript error on every page;
- drops the theme's `fontawesome.js` from every page: the theme's stylesheet already draws the
  same icons with Font Awesome's web fonts (about 0.3 MB, fetched once), and the script, which
  redraws them as SVG, weighed 1.5 MB on every page, a third of a chapter's budget of 5 MB.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"

# destination folder under _static/ -> (package folder in node_modules, files or glob patterns)
ASSETS: dict[str, list[tuple[str, list[str]]]] = {
    "mathjax": [
        # The combined component plus what it loads at run time, relative to its own url:
        # TeX extensions (autoloaded by macros such as \boldsymbol), fonts, the menu.
        (
            "mathjax/es5",
            [
                "tex-mml-chtml.js",
                "input/tex/extensions",
                "input/mml/extensions",
                "output/chtml/fonts/woff-v2",
                "ui",
                "a11y",
            ],
        ),
    ],
}


def asset_sources() -> list[tuple[Path, Path]]:
    """(file or folder in node_modules, path relative to the built _static/) for every asset."""
    pairs = []
    for destination, packages in ASSETS.items():
        for package, patterns in packages:
            base = NODE_MODULES / package
            for pattern in patterns:
                matches = sorted(base.glob(pattern))
                if not matches:
                    raise ExtensionError(
                        f"offline_assets: {base / pattern} is missing. Run `npm ci` in {ROOT} "
                        "(`make book` and `make test` do it) to install the book's scripts."
                    )
                pairs += [(match, Path(destination) / match.relative_to(base)) for match in matches]
    return pairs


def check_assets(app: Sphinx) -> None:
    asset_sources()  # fail early, with instructions, rather than after writing every page


def copy_assets(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.builder.outdir) / "_static"
    for source, relative in asset_sources():
        target = static / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)


FONTAWESOME_SCRIPT = re.compile(r'<script[^>]*src="[^"]*_static/scripts/fontawesome\.js[^"]*"[^>]*></script>\s*')


def drop_fontawesome_script(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.builder.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        lean = FONTAWESOME_SCRIPT.sub("", text)
        if lean != text:
            page.write_text(lean, encoding="utf-8")


def build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
        if epoch
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return moment.strftime("%Y-%m-%d")


def add_substitutions(app: Sphinx, config: Config) -> None:
    import pgemma

    substitutions = dict(config.myst_substitutions or {})
    substitutions.update(pgemma_version=pgemma.__version__, build_date=build_date())
    config.myst_substitutions = substitutions


def drop_repeated_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (script.filename or "", tuple(sorted(script.attributes.items())))  # None and "" alike
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", add_substitutions)
    app.connect("builder-inited", check_assets)
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    app.connect("build-finished", copy_assets)
    app.connect("build-finished", drop_fontawesome_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
