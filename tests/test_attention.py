"""Attention: the explicit path against transformers and SDPA; grouped-query as repeated heads."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.attention import attention, repeat_kv
from pgemma.masks import decoder_mask


def _inputs(batch=2, heads=4, kv_heads=2, queries=5, keys=5, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, queries, head_dim, generator=generator)
    k = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    v = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    return q, k, v


def test_repeat_kv_gives_each_group_its_kv_head():
    k = torch.randn(2, 3, 5, 4)
    assert torch.equal(repeat_kv(k, 4), k.repeat_interleave(4, dim=1))
    assert repeat_kv(k, 1) is k


def test_shapes_and_weights():
    q, k, v = _inputs(queries=3, keys=6)
    out, weights = attention(q, k, v, return_weights=True)
    assert out.shape == (2, 4, 3, 8) and weights.shape == (2, 4, 3, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3))


def test_masked_keys_get_exactly_zero_weight():
    q, k, v = _inputs()
    mask = decoder_mask(5, 5, attention_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), batch_size=2)
    _, weights = attention(q, k, v, mask, return_weights=True)
    masked_in_a_row_that_sees_a_key = (~mask & mask.any(-1, keepdim=True)).expand_as(weights)
    assert masked_in_a_row_that_sees_a_key.sum() == 4 * (9 + 10)  # heads x (future + padding keys)
    assert torch.all(weights[masked_in_a_row_that_sees_a_key] == 0)
    # Rows 0 and 1 of the padded sequence see no key: uniform weights, finite (no NaN).
    torch.testing.assert_close(weights[0, :, :2], torch.full((4, 2, 5), 0.2))


def test_matches_transformers_eager_attention():
    modeling_gemma = pytest.importorskip("transformers.models.gemma.modeling_gemma")
    q, k, v = _inputs(heads=6, kv_heads=2, queries=7, keys=7)
    mask = decoder_mask(
        7,
        7,
        torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]]),
        torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]),
    )
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    theirs, their_weights = modeling_gemma.eager_attention_forward(module, q, k, v, additive, scaling=8**-0.5)
    ours, our_weights = attention(q, k, v, mask, return_weights=True)
    assert torch.equal(ours.transpose(1, 2), theirs)  # transformers returns (B, T, N, H)
    assert torch.equal(our_weights, their_weights)


def test_sdpa_agrees_where_a_query_sees_a_key():
    q, k, v = _inputs(heads=8, kv_heads=1, queries=6, keys=9)
    mask = decoder_mask(
        6,
        9,
        torch.tensor([[1] * 9, [0, 0, 0, 0, 1, 1, 1, 1, 1]]),
        torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]),
    )
    explicit, fused = attention(q, k, v, mask), attention(q, k, v, mask, use_sdpa=True)
    sees_a_key = mask.any(-1).expand(2, 8, 6)  # (B, N, T)
    torch.testing.assert_close(explicit[sees_a_key], fused[sees_a_key])
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, use_sdpa=True))
    with pytest.raises(ValueError, match="return_weights=True needs the explicit path"):
        attention(q, k, v, use_sdpa=True, return_weights=True)


def test_bfloat16_softmax_is_computed_in_float32():
    q, k, v = (t.bfloat16() for t in _inputs())
    _, weights = attention(q, k, v, return_weights=True)
    scores = (q.float() @ repeat_kv(k, 2).float().transpose(-2, -1)) * 8**-0.5
    assert weights.dtype == torch.bfloat16
    torch.testing.assert_close(weights.float(), torch.softmax(scores, -1), rtol=0, atol=1e-2)


@settings(max_examples=20, deadline=None)
@given(
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 4),
    queries=st.integers(1, 6),
    cached=st.integers(0, 4),
    head_dim=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_grouped_query_equals_multi_head_with_repeated_kv_heads(
    kv_heads, groups, queries, cached, head_dim, seed, data
):
    heads, keys = kv_heads * groups, queries + cached
    q, k, v = _inputs(1, heads, kv_heads, queries, keys, head_dim, seed)
    types = torch.tensor([data.draw(st.lists(st.integers(0, 1), min_size=queries, max_size=queries))])
    mask = decoder_mask(queries, keys, token_type_ids=types)
    grouped = attention(q, k, v, mask)
    multi_head = attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), mask)
    assert torch.equal(grouped, multi_head)
    # And head by head: query head n reads kv head n // G.
    for n in range(heads):
        one = attention(q[:, n : n + 1], k[:, n // groups : n // groups + 1], v[:, n // groups : n // groups + 1], mask)
        torch.testing.assert_close(one[:, 0], grouped[:, n])


def test_soft_cap_squashes_scores_and_keeps_the_explicit_path():
    from pgemma.attention import soft_cap

    x = torch.tensor([-100.0, -1.0, 0.0, 0.01, 100.0])
    capped = soft_cap(x, 5.0)
    assert capped.abs().max() <= 5.0 and capped[3] == pytest.approx(0.01, rel=1e-4)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=generator) * 3 for _ in range(3))
    explicit, weights = attention(q, k, v, softcap=1.0, scale=0.5, return_weights=True)
    # SDPA has no soft-cap: with one, use_sdpa=True takes the explicit path (the same numbers, weights too).
    assert torch.equal(attention(q, k, v, softcap=1.0, scale=0.5, use_sdpa=True), explicit)
    expected = torch.softmax(soft_cap(q @ k.transpose(-2, -1) * 0.5, 1.0), dim=-1)
    torch.testing.assert_close(weights, expected)
    assert not torch.allclose(explicit, attention(q, k, v, scale=0.5))
    torch.testing.assert_close(attention(q, k, v, scale=0.5, use_sdpa=True), attention(q, k, v, scale=0.5))
