"""The book's figures and widgets draw without error and show what they claim."""

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")

from pgemma.samples import sample_photo  # noqa: E402
from pgemma.viz.patches import plot_patch_grid, plot_patch_sequence, plot_token_ids  # noqa: E402
from pgemma.viz.widgets import choice_slider, interactive_figure  # noqa: E402


def test_patch_figures():
    image = sample_photo().resize((224, 224))
    grid = plot_patch_grid(image, 14)
    assert "16 x 16 = 256 patches" in grid.axes[0].get_title()
    assert len(plot_patch_sequence(image, 14, count=5).axes) == 5
    assert len(plot_token_ids(["a", " cat"], [7, 8]).axes[0].texts) == 4


def test_interactive_figure_lays_out_controls_above_the_figure():
    slider = choice_slider("patch size", [7, 14, 28], value=14)
    box = interactive_figure(
        lambda patch_size: plot_patch_grid(sample_photo().resize((224, 224)), patch_size), patch_size=slider
    )
    assert isinstance(box, widgets.VBox)
    controls, figure_area = box.children
    assert controls.children == (slider,) and isinstance(figure_area, widgets.Output)
