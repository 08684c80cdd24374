"""Chapter "Normalization": the example batch, the norms it is fed to, and the figures."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma.viz.normalization import NORMS, example_features, normalize, plot_norm_axes, plot_norm_statistics  # noqa: E402


def test_example_features_are_seeded_shifted_and_scaled():
    base = example_features(16, seed=3)
    assert base.shape == (16, 12)
    torch.testing.assert_close(example_features(16, seed=3), base)
    torch.testing.assert_close(example_features(16, shift=2.0, scale=5.0, seed=3), base * 5 + 2)
    assert not torch.equal(example_features(16, seed=4), base)
    with pytest.raises(ValueError, match="batch_size"):
        example_features(0)


def test_each_norm_fixes_the_statistics_of_its_own_axis():
    x = example_features(32, shift=3.0, scale=4.0)
    batch = normalize(x, "BatchNorm")
    torch.testing.assert_close(batch.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.var(0, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)
    layer = normalize(x, "LayerNorm")
    torch.testing.assert_close(layer.mean(1), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.var(1, unbiased=False), torch.ones(32), atol=1e-3, rtol=0)
    rms = normalize(x, "RMSNorm")
    torch.testing.assert_close(rms.pow(2).mean(1), torch.ones(32), atol=1e-4, rtol=0)
    assert rms.mean(1).abs().max() > 0.1  # RMSNorm does not centre
    assert torch.equal(normalize(x, "none"), x)


def test_normalize_refuses_unknown_norms_and_single_item_batchnorm():
    with pytest.raises(ValueError, match="norm must be one of"):
        normalize(torch.zeros(2, 3), "GroupNorm")
    with pytest.raises(ValueError, match="at least 2 items"):
        normalize(torch.zeros(1, 3), "BatchNorm")


@pytest.mark.parametrize("norm", NORMS)
def test_statistics_figure_draws_every_norm(norm):
    figure = plot_norm_statistics(norm, batch_size=5, shift=1.0, scale=2.0)
    assert len(figure.axes) == 4
    item_means = figure.axes[2].lines[1].get_ydata()
    assert len(item_means) == 5  # one dot per item
    assert norm in figure._suptitle.get_text()


def test_axes_figure_has_one_panel_per_norm():
    titles = [ax.get_title() for ax in plot_norm_axes().axes]
    assert [t.split(":")[0] for t in titles] == ["BatchNorm", "LayerNorm", "RMSNorm"]
