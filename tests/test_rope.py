"""RoPE: transformers' layout and numbers, norm preservation, and the relative-position property."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.rope import apply_rope, rope_cos_sin, rope_frequencies, rotate_half


def test_frequencies_fall_geometrically_from_one():
    freqs = rope_frequencies(8, theta=10_000.0)
    torch.testing.assert_close(freqs, torch.tensor([1.0, 10_000**-0.25, 10_000**-0.5, 10_000**-0.75]))


def test_half_split_pairs_channel_i_with_i_plus_half():
    head_dim, position = 8, 3
    x = torch.zeros(1, 1, 1, head_dim)
    x[..., 1] = 1.0  # channel 1 is paired with channel 1 + 4 = 5
    cos, sin = rope_cos_sin(torch.tensor([[position]]), head_dim, 10_000.0, torch.float32)
    y = apply_rope(x, cos, sin).flatten()
    angle = position * 10_000 ** (-2 / head_dim)
    expected = torch.zeros(head_dim)
    expected[1], expected[5] = math.cos(angle), math.sin(angle)
    torch.testing.assert_close(y, expected)


def test_rotate_half_is_a_quarter_turn():
    x = torch.randn(2, 3, 4, 16)
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


def test_position_zero_is_the_identity_and_norms_are_kept():
    x = torch.randn(2, 4, 6, 32)
    positions = torch.arange(6).expand(2, 6)
    cos, sin = rope_cos_sin(positions, 32, 10_000.0, torch.float32)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers(dtype):
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding, apply_rotary_pos_emb

    config = transformers.GemmaConfig(head_dim=16, hidden_size=32, num_attention_heads=2)
    q, k = torch.randn(2, 2, 5, 16).to(dtype), torch.randn(2, 1, 5, 16).to(dtype)
    positions = torch.tensor([[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]])
    hf_cos, hf_sin = GemmaRotaryEmbedding(config)(q, positions)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = rope_cos_sin(positions, 16, 10_000.0, dtype)
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)
    assert torch.equal(apply_rope(q, cos, sin), hf_q) and torch.equal(apply_rope(k, cos, sin), hf_k)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 500),
    n=st.integers(0, 500),
    shift=st.integers(-400, 400),
    half=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_dot_product_depends_only_on_the_distance(m, n, shift, half, seed):
    """q_m . k_n == q_(m+s) . k_(n+s): RoPE encodes relative position."""
    head_dim = 2 * half
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, head_dim, generator=generator), torch.randn(1, 1, 1, head_dim, generator=generator)
    shift = max(shift, -min(m, n))

    def score(query_position: int, key_position: int) -> torch.Tensor:
        cos_q, sin_q = rope_cos_sin(torch.tensor([[query_position]]), head_dim, 10_000.0, torch.float64)
        cos_k, sin_k = rope_cos_sin(torch.tensor([[key_position]]), head_dim, 10_000.0, torch.float64)
        return (apply_rope(q.double(), cos_q, sin_q) * apply_rope(k.double(), cos_k, sin_k)).sum()

    # Angles are computed in float32 (as in the reference), so agreement is to float32 precision.
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=0, atol=1e-3 * head_dim)
