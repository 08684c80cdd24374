"""SigLIP: shapes, the patch embedding as a ViT linear map, and parity with transformers."""

import pytest
import torch

from pgemma.config import SiglipVisionConfig
from pgemma.siglip import SiglipVisionModel


def _random_model(config: SiglipVisionConfig, use_sdpa: bool = False) -> SiglipVisionModel:
    torch.manual_seed(0)
    model = SiglipVisionModel(config, use_sdpa)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def test_shapes_on_tiny():
    config = SiglipVisionConfig.tiny()
    features, hidden_states = _random_model(config)(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 16, 32)  # (B, P, D): 4 x 4 patches of 8 x 8 pixels
    assert len(hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, 16, 32) for h in hidden_states)


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch():
    config = SiglipVisionConfig.tiny()
    embeddings = _random_model(config).vision_model.embeddings
    images = torch.randn(2, 3, 32, 32)
    p, side = config.patch_size, config.image_size // config.patch_size
    patches = images.reshape(2, 3, side, p, side, p).permute(0, 2, 4, 1, 3, 5)  # (B, I/p, I/p, C, p, p)
    patches = patches.reshape(2, side * side, 3 * p * p)  # (B, P, C*p*p), row-major over the grid
    conv = embeddings.patch_embedding
    expected = patches @ conv.weight.reshape(config.hidden_size, -1).T + conv.bias  # (B, P, D)
    expected = expected + embeddings.position_embedding.weight
    torch.testing.assert_close(embeddings(images), expected, rtol=1e-5, atol=1e-5)


def test_sdpa_matches_explicit_attention():
    config = SiglipVisionConfig.tiny()
    images = torch.randn(2, 3, 32, 32)
    explicit, fused = _random_model(config), _random_model(config, use_sdpa=True)
    torch.testing.assert_close(explicit(images)[0], fused(images)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SiglipVisionConfig.tiny(),
        SiglipVisionConfig(
            hidden_size=40,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=5,
            image_size=30,
            patch_size=6,
            layer_norm_eps=1e-5,
        ),
    ],
    ids=["tiny", "odd_sizes"],
)
def test_matches_transformers(config):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.SiglipVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
        attn_implementation="eager",
    )
    theirs = transformers.SiglipVisionModel(hf_config).eval()
    ours = _random_model(config)
    # transformers >= 5 names the parameters without the vision_model. level.
    theirs.load_state_dict({k.removeprefix("vision_model."): v for k, v in ours.state_dict().items()})
    images = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        features, hidden_states = ours(images)
        reference = theirs(images, output_hidden_states=True)
    assert len(hidden_states) == len(reference.hidden_states)
    for a, b in zip(hidden_states, reference.hidden_states):
        assert torch.equal(a, b)
    assert torch.equal(features, reference.last_hidden_state)
