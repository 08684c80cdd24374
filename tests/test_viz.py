"""The book's figures and widgets draw without error and show what they claim."""

import base64
import json
import re

import ipywidgets as widgets
import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pgemma.samples import sample_photo  # noqa: E402
from pgemma.viz import widgets as pgemma_widgets  # noqa: E402
from pgemma.viz.patches import plot_patch_grid, plot_patch_sequence, plot_token_ids  # noqa: E402
from pgemma.viz.widgets import (  # noqa: E402
    MAX_STATES,
    WIDGET_VIEW,
    choice_slider,
    control_values,
    dropdown,
    enumerate_states,
    float_slider,
    int_slider,
    interactive_figure,
    state_index,
)


def test_patch_figures():
    image = sample_photo().resize((224, 224))
    grid = plot_patch_grid(image, 14)
    assert "16 x 16 = 256 patches" in grid.axes[0].get_title()
    assert len(plot_patch_sequence(image, 14, count=5).axes) == 5
    assert len(plot_token_ids(["a", " cat"], [7, 8]).axes[0].texts) == 4


def draw_title(shown: int, ignored: str = "") -> plt.Figure:
    """A small figure whose title shows `shown` only: states that differ in `ignored` look the same."""
    figure, ax = plt.subplots(figsize=(2.0, 1.0))
    ax.set_title(f"shown {shown}")
    ax.text(0.5, 0.5, str(shown), fontsize=20, ha="center", va="center")
    return figure


def page_data(page: str) -> dict:
    """The states a widget's HTML carries (the JSON read by static_widget.js)."""
    block = re.search(r'<script type="application/json" class="pgemma-states">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


def test_control_values_are_every_slider_step_and_every_option():
    assert control_values(int_slider("n", 2, 0, 6, step=2)) == [("0", 0), ("2", 2), ("4", 4), ("6", 6)]
    assert control_values(float_slider("t", 0.3, 0.1, 0.5, 0.2)) == [("0.10", 0.1), ("0.30", 0.3), ("0.50", 0.5)]
    assert control_values(dropdown("cache", [("with", True), ("without", False)], value=True)) == [
        ("with", True),
        ("without", False),
    ]
    assert control_values(choice_slider("p", [7, 14], value=14)) == [("7", 7), ("14", 14)]
    with pytest.raises(TypeError, match="'name'.*a finite list of values"):
        control_values(widgets.Text(description="name"))


def test_states_are_numbered_row_major_and_their_count_is_limited():
    controls = {"a": choice_slider("a", [1, 2, 3], value=1), "b": dropdown("b", ["x", "y"])}
    states = enumerate_states(controls)
    assert [(a[1], b[1]) for a, b in (s.values() for s in states)] == [
        (1, "x"),
        (1, "y"),
        (2, "x"),
        (2, "y"),
        (3, "x"),
        (3, "y"),
    ]
    assert states[state_index([3, 2], [2, 0])] == {"a": ("3", 3), "b": ("x", "x")}
    too_many = {"rows": int_slider("rows", 0, 0, MAX_STATES), "task": dropdown("task", ["x", "y"])}
    with pytest.raises(ValueError, match=rf"'rows': {MAX_STATES + 1}, 'task': 2 has {2 * (MAX_STATES + 1)} states"):
        enumerate_states(too_many)


def test_every_state_is_drawn_once_and_identical_figures_are_stored_once():
    calls = []

    def draw(shown: int, ignored: str) -> plt.Figure:
        calls.append((shown, ignored))
        return draw_title(shown, ignored)

    shown = choice_slider("shown", [1, 2, 3], value=2)
    ignored = dropdown("ignored", ["p", "q"], value="q")
    page = interactive_figure(draw, shown=shown, ignored=ignored)._repr_mimebundle_()["text/html"]
    data = page_data(page)
    assert sorted(set(calls)) == [(s, i) for s in (1, 2, 3) for i in ("p", "q")]
    assert data["sizes"] == [3, 2] and data["labels"] == [["1", "2", "3"], ["p", "q"]]
    assert len(data["images"]) == 3 and data["figures"] == [0, 0, 1, 1, 2, 2]
    assert all(image.startswith("data:image/webp;base64,") for image in data["images"])
    assert base64.b64decode(data["images"][0].split(",", 1)[1])[8:12] == b"WEBP"
    assert data["captions"][5] == "shown = 3, ignored = q | shown 3"


def test_html_has_one_control_per_control_and_starts_at_the_current_state():
    controls = {
        "shown": int_slider("shown", 4, 0, 6, step=2),
        "ignored": dropdown("ignored", ["p", "q", "r"], value="r"),
    }
    page = interactive_figure(draw_title, **controls)._repr_mimebundle_()["text/html"]
    data = page_data(page)
    ranges = re.findall(
        r'<input type="range" data-control="(\w+)"[^>]* min="0" max="(\d+)" step="1" value="(\d+)">', page
    )
    assert ranges == [("shown", "3", "2")]
    assert re.search(r"<output>4</output>", page)
    select = re.search(r'<select data-control="ignored"[^>]*>(.*?)</select>', page).group(1)
    assert re.findall(r'<option value="(\d)"( selected)?>(\w)</option>', select) == [
        ("0", "", "p"),
        ("1", "", "q"),
        ("2", " selected", "r"),
    ]
    current = state_index(data["sizes"], [2, 2])
    assert f'data-state="{current}"' in page
    assert f'src="{data["images"][data["figures"][current]]}"' in page
    assert "shown = 4, ignored = r | shown 4" in page
    assert "document.currentScript.parentNode" in page  # static_widget.js, inlined: nothing to fetch
    assert "http" not in re.sub(r"data:image/[^\"]+", "", page)


def test_a_value_off_the_grid_is_refused():
    slider = int_slider("shown", 1, 0, 4, step=2)  # ipywidgets keeps 1, which the HTML slider cannot show
    with pytest.raises(ValueError, match="'shown': its value 1 is not one of its steps"):
        interactive_figure(draw_title, shown=slider)


def test_widget_and_html_are_one_output_with_ipywidgets_7_and_8(monkeypatch):
    widget = interactive_figure(draw_title, shown=choice_slider("shown", [1, 2], value=1))
    bundle = widget._repr_mimebundle_()  # how ipywidgets 8 is displayed
    assert bundle[WIDGET_VIEW] == {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}
    assert bundle["text/html"].startswith('<div class="pgemma-widget"')
    shown = []
    monkeypatch.setattr(pgemma_widgets, "display", lambda data, raw: shown.append((data, raw)))
    widget._ipython_display_()  # how ipywidgets 7 is displayed
    assert shown == [(bundle, True)]


def test_interactive_figure_lays_out_controls_above_the_figure():
    slider = choice_slider("patch size", [7, 14, 28], value=14)
    box = interactive_figure(
        lambda patch_size: plot_patch_grid(sample_photo().resize((224, 224)), patch_size), patch_size=slider
    )
    assert isinstance(box, widgets.VBox)  # the live widget
    controls, figure_area = box.children
    assert controls.children == (slider,) and isinstance(figure_area, widgets.Output)


def test_images_are_webp_or_png_where_pillow_has_no_webp(monkeypatch):
    figure = draw_title(1)
    assert pgemma_widgets.figure_image(figure).startswith("data:image/webp;base64,")
    monkeypatch.setattr(pgemma_widgets.features, "check", lambda feature: False)
    png = pgemma_widgets.figure_image(figure)
    assert png.startswith("data:image/png;base64,")
    assert base64.b64decode(png.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(figure)
