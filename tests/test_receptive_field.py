"""Chapter "CNN vs ViT": receptive fields by gradients, ViT attention weights, and their figures."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma.config import SiglipVisionConfig  # noqa: E402
from pgemma.receptive_field import (  # noqa: E402
    average_cnn_field,
    cnn_receptive_field,
    effective_side,
    input_gradient,
    make_cnn,
    vit_attention,
    vit_receptive_field,
)
from pgemma.siglip import SiglipAttention, SiglipVisionTransformer  # noqa: E402
from pgemma.viz.receptive_field import plot_receptive_field_growth, plot_receptive_fields  # noqa: E402

CONFIG = SiglipVisionConfig(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4
)


def _models() -> tuple[torch.nn.Sequential, SiglipVisionTransformer, torch.Tensor]:
    torch.manual_seed(0)
    return make_cnn(3, channels=4), SiglipVisionTransformer(CONFIG).eval(), torch.randn(1, 3, 16, 16)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_cnn_receptive_field_is_the_square_the_formula_gives(kernel_size):
    torch.manual_seed(0)
    cnn, image = make_cnn(2, channels=4, kernel_size=kernel_size), torch.randn(1, 3, 20, 20)
    for layer in (1, 2):
        side = 1 + layer * (kernel_size - 1)
        field = cnn_receptive_field(cnn, image, layer, row=10, col=9)
        expected = torch.zeros(20, 20, dtype=torch.bool)
        expected[10 - side // 2 : 10 + side // 2 + 1, 9 - side // 2 : 9 + side // 2 + 1] = True
        assert torch.equal(field > 0, expected)


def test_vit_patch_sees_its_patch_then_the_whole_image():
    _, vit, image = _models()
    own = vit_receptive_field(vit, image, layer=0, patch=5)  # patch 5: rows 4..7, columns 4..7
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:8, 4:8] = True
    assert torch.equal(own > 0, expected)
    assert bool((vit_receptive_field(vit, image, layer=1, patch=5) > 0).all())


def test_vit_attention_rows_are_distributions_over_patches():
    _, vit, image = _models()
    weights = vit_attention(vit, image, layer=2, patch=3)
    assert weights.shape == (CONFIG.num_patches,)
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_vit_attention_is_what_the_layer_computes_on_its_input():
    _, vit, image = _models()
    block, attentions = vit.encoder.layers[1], []
    with torch.no_grad():
        hidden = vit(image)[1][1]  # (1, P, D): the input of layer 2
        block.self_attn(block.layer_norm1(hidden), attentions)
    expected = attentions[0][0, :, 3].mean(0)  # (P,)
    torch.testing.assert_close(vit_attention(vit, image, layer=2, patch=3), expected)
    fused = SiglipVisionTransformer(CONFIG, use_sdpa=True).eval()
    fused.load_state_dict(vit.state_dict())  # the same weights, SDPA on
    torch.testing.assert_close(vit_attention(fused, image, layer=2, patch=3), expected)


def test_siglip_attention_returns_the_weights_it_used():
    torch.manual_seed(0)
    attention = SiglipAttention(CONFIG).eval()
    x = torch.randn(2, 5, 16)
    attentions = []
    out = attention(x, attentions)
    torch.testing.assert_close(out, attention(x))
    (weights,) = attentions
    assert weights.shape == (2, 2, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))


def test_bad_arguments_are_refused():
    cnn, vit, image = _models()
    with pytest.raises(ValueError, match="layer must be in 1..3"):
        cnn_receptive_field(cnn, image, 4, 0, 0)
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        vit_receptive_field(vit, image, 3, 0)
    with pytest.raises(ValueError, match="layer must be in 1..2"):
        vit_attention(vit, image, 0, 0)
    with pytest.raises(ValueError, match="one image"):
        input_gradient(torch.zeros(2, 3, 4, 4), lambda x: x)
    with pytest.raises(ValueError, match="odd kernel_size"):
        make_cnn(2, kernel_size=4)


def test_figures():
    cnn, vit, image = _models()
    growth = plot_receptive_field_growth(cnn, vit, image, row=6, col=7)
    titles = [ax.get_title() for ax in growth.axes if ax.images]
    assert "CNN, 1 layer\n9 of 256 pixels" in titles and "ViT, 1 layer\n256 of 256 pixels" in titles
    fields = plot_receptive_fields(cnn, vit, image, layer=2, row=6, col=7)
    assert "patch 5" in fields.axes[0].get_title()
    with pytest.raises(ValueError, match="outside"):
        plot_receptive_fields(cnn, vit, image, layer=1, row=16, col=0)


def test_effective_side_is_the_smallest_square_holding_the_mass():
    field = torch.zeros(9, 9)
    field[4, 4], field[3, 5], field[0, 8] = 4.0, 2.0, 2.0  # centre, one step out, the far corner
    assert effective_side(field, 4, 4, mass=0.5) == 1
    assert effective_side(field, 4, 4, mass=0.75) == 3
    assert effective_side(field, 4, 4, mass=1.0) == 9
    assert effective_side(field, 1, 7, mass=1.0) == 7  # clipped at the border: the centre (4, 4) is 3 steps away
    with pytest.raises(ValueError, match="mass must be in"):
        effective_side(field, 4, 4, mass=0.0)
    with pytest.raises(ValueError, match="outside the field"):
        effective_side(field, 9, 4)
    with pytest.raises(ValueError, match="zero everywhere"):
        effective_side(torch.zeros(3, 3), 1, 1)


def test_average_cnn_field_fills_the_theoretical_square_but_peaks_at_its_centre():
    state = torch.random.get_rng_state()
    field = average_cnn_field(num_layers=4, num_networks=4, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert field.shape == (9, 9) and bool((field > 0).all())
    torch.testing.assert_close(field, average_cnn_field(num_layers=4, num_networks=4, seed=1))
    ring = field.clone()
    ring[1:-1, 1:-1] = 0.0
    assert field[3:6, 3:6].mean() > 2 * ring[ring > 0].mean()  # the centre moves the output more than the border
    assert effective_side(field, 4, 4) < 9
