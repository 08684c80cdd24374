"""The one widget pattern of the book: controls above a figure that redraws.

A widget is live in Colab or Jupyter, where the kernel redraws the figure. The published book has
no kernel, so `interactive_figure` also draws the figure once for every state of the controls and
carries them all in a second representation of the same output, `text/html`: HTML controls over the
same values, and a short script (`static_widget.js`, inlined) that shows the figure of the chosen
state. The page shows pgemma's own matplotlib figures, so nothing is re-implemented in JavaScript.

Every control therefore has a finite list of values (a slider's min..max by step, a dropdown's
options), and a widget has at most `MAX_STATES` states: chapters choose documented grids.

Images: WebP at 72 dpi (a figure 10 inches wide is 720 pixels, about the width of the book's
text), lossless unless lossy WebP at quality 90 is smaller. Measured per state, as PNG / lossy WebP
(quality 80) / lossless WebP: chapter 7's masks 23 / 12 / 7 kB, chapter 3's norms 35 / 16 / 11 kB;
line art is smallest, and exact, lossless. A photo is not: chapter 1's patch grid is 108 kB
lossless and 26 kB at quality 90, which keeps that page under its 5 MB budget. Identical figures
are stored once. Drawing, not encoding, sets the time (chapter 3's figure: 0.66 s to draw, 0.1 s
more to encode), hence `MAX_STATES`.

Core ipywidgets only (sliders, dropdowns, boxes, `interactive_output`), so the widgets work with
ipywidgets 7.7 (Colab) and 8.x alike.
"""

import base64
import html
import io
import itertools
import json
import math
from collections.abc import Callable
from importlib import resources

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.figure import Figure
from PIL import Image, features

LIVE_NOTE = "The controls are live when this notebook runs in Colab or Jupyter."
MAX_STATES = 120  # a state takes 0.1 to 1 s to draw, and a chapter must run in under 60 s
IMAGE_DPI = 72
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CONTROLS_STYLE = "display:flex;flex-wrap:wrap;align-items:center;gap:0.5em 1.5em;margin-bottom:0.75em"


class InteractiveFigure(widgets.VBox):
    """The live widget (controls, then the figure), displayed with its figures for every state as HTML.

    Jupyter and Colab draw the widget view; a page with no kernel (the published book) shows the
    `text/html` representation. ipywidgets 7 displays a widget with `_ipython_display_` and 8 with
    `_repr_mimebundle_`: both give the same bundle.
    """

    def __init__(self, children: list[widgets.Widget], static_html: str) -> None:
        super().__init__(children)
        self.static_html = static_html

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return {
            "text/plain": f"InteractiveFigure({len(self.children[0].children)} controls)",
            WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": self.model_id},
            "text/html": self.static_html,
        }

    def _ipython_display_(self, **kwargs) -> None:
        display(self._repr_mimebundle_(), raw=True)


def interactive_figure(draw: Callable[..., Figure], **controls: widgets.ValueWidget) -> InteractiveFigure:
    """Lay out `controls` above the figure `draw(**values)`, redrawn when a control changes.

    Args:
        draw: a plotting function from `pgemma.viz` that returns a matplotlib Figure; its keyword
            arguments are the names of `controls`.
        controls: one ipywidget per keyword argument of `draw` (see `control_values`).
    Returns:
        An InteractiveFigure: the controls, then the figure; displayed, it also carries the figure
        of every state as HTML for pages with no kernel.
    """

    def redraw(**values) -> None:
        figure = draw(**values)
        display(figure)
        plt.close(figure)  # shown once, in the widget's output area

    static_html = render_states(draw, controls)
    figure_area = widgets.interactive_output(redraw, controls)
    # Controls wrap onto several rows rather than squeezing each slider to its handle.
    control_row = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
    return InteractiveFigure([control_row, figure_area], static_html)


def control_values(control: widgets.ValueWidget) -> list[tuple[str, object]]:
    """Every (label, value) a control can take, in order: a slider's min..max by step, or the options."""
    if isinstance(control, (widgets.Dropdown, widgets.SelectionSlider)):
        return list(zip(control._options_labels, control._options_values))
    if isinstance(control, (widgets.IntSlider, widgets.FloatSlider)):
        count = math.floor((control.max - control.min) / control.step + 1e-9) + 1
        values = [control.min + k * control.step for k in range(count)]
        if isinstance(control, widgets.FloatSlider):
            values = [round(value, 10) for value in values]
        return [(format(value, control.readout_format), value) for value in values]
    raise TypeError(
        f"{type(control).__name__} {control.description!r}: use a slider or a dropdown (a finite list of values)"
    )


def value_position(control: widgets.ValueWidget, values: list[tuple[str, object]]) -> int:
    """The index of the control's current value in `values`."""
    for position, (_, value) in enumerate(values):
        if value == control.value or (isinstance(value, float) and math.isclose(value, control.value)):
            return position
    raise ValueError(f"control {control.description!r}: its value {control.value!r} is not one of its steps")


def enumerate_states(controls: dict[str, widgets.ValueWidget]) -> list[dict[str, tuple[str, object]]]:
    """Every state of `controls`, row-major (the last control varies fastest): name -> (label, value)."""
    values = {name: control_values(control) for name, control in controls.items()}
    count = math.prod(len(options) for options in values.values())
    if count > MAX_STATES:
        sizes = ", ".join(f"{control.description!r}: {len(values[name])}" for name, control in controls.items())
        raise ValueError(
            f"a widget with controls {sizes} has {count} states, more than {MAX_STATES}: "
            "use coarser slider steps or choice_slider over a shorter list of values"
        )
    return [dict(zip(values, state)) for state in itertools.product(*values.values())]


def figure_texts(figure: Figure) -> list[str]:
    """The figure's own titles (suptitle, then each axes' titles), each on one line."""
    suptitle = figure._suptitle.get_text() if figure._suptitle is not None else ""
    titles = [ax.get_title(loc) for ax in figure.axes for loc in ("left", "center", "right")]
    return [" ".join(text.split()) for text in [suptitle, *titles] if text.strip()]


def caption(controls: dict[str, widgets.ValueWidget], state: dict[str, tuple[str, object]], figure: Figure) -> str:
    """What a state shows, in words: the control values, then the figure's titles."""
    values = ", ".join(f"{controls[name].description} = {label}" for name, (label, _) in state.items())
    return " | ".join([values, *figure_texts(figure)])


def figure_image(figure: Figure) -> str:
    """The figure as a data URL: WebP, lossless or lossy at quality 90 if that is smaller (see the module
    docstring); PNG where Pillow was built without WebP (an old Pillow compiled from source)."""
    drawn = io.BytesIO()  # drawn once, encoded twice; cropped to its contents, as Jupyter shows figures
    figure.savefig(drawn, format="png", dpi=IMAGE_DPI, bbox_inches="tight")
    if not features.check("webp"):
        return f"data:image/png;base64,{base64.b64encode(drawn.getvalue()).decode()}"
    pixels = Image.open(drawn)
    encoded = []
    for options in ({"lossless": True}, {"quality": 90}):
        buffer = io.BytesIO()
        pixels.save(buffer, format="WEBP", **options)
        encoded.append(buffer.getvalue())
    return f"data:image/webp;base64,{base64.b64encode(min(encoded, key=len)).decode()}"


def render_states(draw: Callable[..., Figure], controls: dict[str, widgets.ValueWidget]) -> str:
    """Draw every state of `controls` once; return the HTML block that shows any of them with no kernel."""
    values = {name: control_values(control) for name, control in controls.items()}
    positions = [value_position(control, values[name]) for name, control in controls.items()]  # before drawing
    states = enumerate_states(controls)
    images: list[str] = []
    image_index: dict[str, int] = {}  # an image's data URL -> its index in `images`
    figures, captions = [], []
    for state in states:
        figure = draw(**{name: value for name, (_, value) in state.items()})
        image = figure_image(figure)
        captions.append(caption(controls, state, figure))
        plt.close(figure)
        if image not in image_index:
            image_index[image] = len(images)
            images.append(image)
        figures.append(image_index[image])
    data = {
        "sizes": [len(options) for options in values.values()],
        "labels": [[label for label, _ in options] for options in values.values()],
        "images": images,
        "figures": figures,
        "captions": captions,
    }
    current = state_index(data["sizes"], positions)
    return static_html(controls, values, positions, data, current)


def state_index(sizes: list[int], positions: list[int]) -> int:
    """The number of the state whose controls sit at `positions` (row-major, as in static_widget.js)."""
    index = 0
    for size, position in zip(sizes, positions):
        index = index * size + position
    return index


def static_html(
    controls: dict[str, widgets.ValueWidget],
    values: dict[str, list[tuple[str, object]]],
    positions: list[int],
    data: dict,
    current: int,
) -> str:
    """HTML controls (a range input per slider, a select per dropdown), the figure, its caption, the script."""
    rows = []
    for k, (name, control) in enumerate(controls.items()):
        label = html.escape(control.description)
        if isinstance(control, widgets.Dropdown):
            options = "".join(
                f'<option value="{i}"{" selected" if i == positions[k] else ""}>{html.escape(text)}</option>'
                for i, (text, _) in enumerate(values[name])
            )
            field = f'<select data-control="{name}" aria-label="{label}">{options}</select>'
        else:
            field = (
                f'<input type="range" data-control="{name}" aria-label="{label}" min="0" '
                f'max="{len(values[name]) - 1}" step="1" value="{positions[k]}">'
                f"<output>{html.escape(values[name][positions[k]][0])}</output>"
            )
        rows.append(f'<label class="pgemma-control" style="white-space:nowrap">{label} {field}</label>')
    # "</" must not end the script element early; JSON reads "<\/" as "</".
    states = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    script = resources.files("pgemma.viz").joinpath("static_widget.js").read_text()
    text = html.escape(data["captions"][current])
    return (
        f'<div class="pgemma-widget" data-state="{current}">'
        f'<div class="pgemma-controls" style="{CONTROLS_STYLE}">{"".join(rows)}</div>'
        f'<img class="pgemma-figure" src="{data["images"][data["figures"][current]]}" alt="{text}" '
        'style="display:block;max-width:100%">'
        f'<p class="pgemma-caption" style="font-size:small">{text}</p>'
        f'<script type="application/json" class="pgemma-states">{states}</script>'
        f"<script>{script}</script></div>"
    )


def int_slider(description: str, value: int, low: int, high: int, step: int = 1) -> widgets.IntSlider:
    """An integer slider that reports its value only when released (redraws stay cheap)."""
    return widgets.IntSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )


def float_slider(description: str, value: float, low: float, high: float, step: float) -> widgets.FloatSlider:
    """A float slider that reports its value only when released."""
    return widgets.FloatSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )


def dropdown(description: str, options: list, value=None) -> widgets.Dropdown:
    """A dropdown menu of `options` (the first is selected unless `value` is given)."""
    return widgets.Dropdown(
        options=options,
        value=options[0] if value is None else value,
        description=description,
        style={"description_width": "initial"},
    )


def choice_slider(description: str, options: list, value) -> widgets.SelectionSlider:
    """A slider over a fixed list of values (e.g. the patch sizes that divide an image)."""
    return widgets.SelectionSlider(
        options=options,
        value=value,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )
