"""The Gemma decoder: shapes, weight tying, the embedding scale, and parity with transformers."""

import pytest
import torch

from pgemma.config import GemmaConfig
from pgemma.masks import decoder_mask


def test_shapes_and_tied_head(random_decoder):
    config = GemmaConfig.tiny()
    model = random_decoder(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embeds = model.model.embed_tokens(torch.randint(0, 256, (2, 5)))
    logits, cache, hidden_states = model(embeds, decoder_mask(5, 5, batch_size=2), torch.arange(5).expand(2, 5))
    assert logits.shape == (2, 5, 256) and cache is None
    assert len(hidden_states) == config.num_hidden_layers + 1


def test_embeddings_are_scaled_by_sqrt_width_rounded_to_the_activation_dtype(random_decoder):
    config = GemmaConfig(
        vocab_size=8,
        hidden_size=3072,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=2,
    )
    model = random_decoder(config).to(torch.bfloat16)
    embeds = model.model.embed_tokens(torch.tensor([[1, 2]]))
    _, _, hidden_states = model(embeds, decoder_mask(2, 2), torch.arange(2)[None])
    # sqrt(3072) = 55.43 is 55.5 in bfloat16; the product is rounded once more, to bfloat16.
    assert torch.equal(hidden_states[0], embeds * torch.tensor(55.5, dtype=torch.bfloat16))
    assert not torch.equal(hidden_states[0], (embeds.float() * 3072**0.5).bfloat16())


@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=["multi_query", "grouped_query", "multi_head"])
def test_matches_transformers_gemma(kv_heads, random_decoder):
    transformers = pytest.importorskip("transformers")
    sizes = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=20,
        max_position_embeddings=64,
    )
    config = GemmaConfig(**sizes)
    hf_config = transformers.GemmaConfig(**sizes, hidden_act="gelu_pytorch_tanh", attn_implementation="eager")
    theirs = transformers.GemmaForCausalLM(hf_config).eval()
    ours = random_decoder(config)
    theirs.load_state_dict(ours.state_dict())  # the same names: model.layers.N..., lm_head
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.tensor([[1] * 9, [0, 0, 0] + [1] * 6])
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=attention_mask).logits
        # transformers' Gemma counts positions from 0 and ignores padding when none are given.
        logits, _, _ = ours(
            ours.model.embed_tokens(ids), decoder_mask(9, 9, attention_mask), torch.arange(9).expand(2, 9)
        )
    assert (logits - reference).abs().max() <= 1e-5


def test_logits_to_keep_applies_the_head_to_the_last_positions_only(random_decoder):
    config = GemmaConfig.tiny()
    model = random_decoder(config)
    embeds = torch.randn(2, 5, config.hidden_size)
    mask, positions = decoder_mask(5, 5, batch_size=2), torch.arange(5).expand(2, 5)
    with torch.no_grad():
        every, _, _ = model(embeds, mask, positions)
        last, _, _ = model(embeds, mask, positions, logits_to_keep=1)
    assert last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last, every[:, -1:])
