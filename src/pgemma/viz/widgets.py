"""The one widget pattern of the book: controls above a figure that redraws.

Core ipywidgets only (sliders, dropdowns, boxes, `interactive_output`), so the widgets work with
ipywidgets 7.7 (Colab) and 8.x alike.
"""

from collections.abc import Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.figure import Figure

LIVE_NOTE = "The controls are live when this notebook runs in Colab or Jupyter."


def interactive_figure(draw: Callable[..., Figure], **controls: widgets.ValueWidget) -> widgets.VBox:
    """Lay out `controls` above the figure `draw(**values)`, redrawn when a control changes.

    Args:
        draw: a plotting function from `pgemma.viz` that returns a matplotlib Figure; its keyword
            arguments are the names of `controls`.
        controls: one ipywidget per keyword argument of `draw`.
    Returns:
        A VBox: the controls, then the figure.
    """

    def redraw(**values) -> None:
        figure = draw(**values)
        display(figure)
        plt.close(figure)  # shown once, in the widget's output area

    figure_area = widgets.interactive_output(redraw, controls)
    # Controls wrap onto several rows rather than squeezing each slider to its handle.
    control_row = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
    return widgets.VBox([control_row, figure_area])


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
