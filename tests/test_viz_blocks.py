"""Chapter "Transformer blocks": the GELU figure and the residual-stream figure show what they claim."""

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma.viz.blocks import gelu_difference, plot_gelu_approximation, plot_residual_stream  # noqa: E402


def test_gelu_difference_is_exact_minus_tanh_and_symmetric():
    x, difference = gelu_difference(-3.0, 3.0, points=601)
    assert x.dtype == torch.float64 and x.shape == difference.shape == (601,)
    phi = 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))
    tanh = 0.5 * 1.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1.5 + 0.044715 * 1.5**3)))
    assert difference[450].item() == pytest.approx(1.5 * phi - tanh, abs=1e-12)  # x[450] = 1.5
    torch.testing.assert_close(difference, difference.flip(0))  # the same at x and -x
    assert 4e-4 < difference.abs().max() < 5e-4
    with pytest.raises(ValueError, match="low < high"):
        gelu_difference(1.0, -1.0)


def test_gelu_figure_marks_the_largest_difference():
    figure = plot_gelu_approximation()
    left, right = figure.axes
    assert len(left.lines) == 2
    title = right.get_title()
    assert "4.73e-04" in title and "±2.70" in title


def stream_data(layers: int = 3, length: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    stream = torch.rand(layers + 1, length, generator=generator).cumsum(0)  # (L + 1, T), growing
    return stream, torch.rand(layers, length, generator=generator), torch.rand(layers, length, generator=generator)


def test_residual_stream_figure_draws_every_token_and_the_chosen_one():
    stream, attention, mlp = stream_data()
    figure = plot_residual_stream(stream, attention, mlp, position=2, tokens=list("abcde"))
    left, right = figure.axes
    assert len(left.lines) == 5 + 2  # one grey line per token, the median, the chosen token
    assert list(left.lines[-1].get_ydata()) == pytest.approx(stream[:, 2].tolist())
    heights = [bar.get_height() for bar in right.patches]
    assert heights == pytest.approx(stream[:-1, 2].tolist() + attention[:, 2].tolist() + mlp[:, 2].tolist())
    assert "'c' (position 2)" in right.get_title()


def test_residual_stream_figure_refuses_mismatched_inputs():
    stream, attention, mlp = stream_data()
    with pytest.raises(ValueError, match="position must be in"):
        plot_residual_stream(stream, attention, mlp, position=5)
    with pytest.raises(ValueError, match="expected stream"):
        plot_residual_stream(stream[:-1], attention, mlp, position=0)
    with pytest.raises(ValueError, match="token labels"):
        plot_residual_stream(stream, attention, mlp, position=0, tokens=["a"])
