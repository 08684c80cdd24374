"""Masks: the worked examples, transformers' mask, the cache offset, and structural properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.masks import causal_mask, decoder_mask, padding_mask, prefix_lm_mask, sliding_window_mask


def _grid(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row.split()] for row in rows.strip().splitlines()])


def test_worked_example_prefix_lm():
    expected = _grid("""
        1 1 1 1 . .
        1 1 1 1 . .
        1 1 1 1 . .
        1 1 1 1 . .
        1 1 1 1 1 .
        1 1 1 1 1 1""")
    assert torch.equal(prefix_lm_mask(torch.tensor([[0, 0, 0, 0, 1, 1]]))[0], expected)
    assert torch.equal(causal_mask(6, 6), torch.ones(6, 6, dtype=torch.bool).tril())


def test_worked_example_queries_after_a_cache():
    assert torch.equal(
        causal_mask(2, 5),
        _grid("""
        1 1 1 1 .
        1 1 1 1 1"""),
    )


def test_worked_example_left_padding():
    mask = decoder_mask(7, 7, torch.tensor([[0, 1, 1, 1, 1, 1, 1]]), torch.tensor([[0, 0, 0, 0, 0, 1, 1]]))
    assert mask.shape == (1, 1, 7, 7)
    assert torch.equal(
        mask[0, 0],
        _grid("""
        . 1 1 1 1 . .
        . 1 1 1 1 . .
        . 1 1 1 1 . .
        . 1 1 1 1 . .
        . 1 1 1 1 . .
        . 1 1 1 1 1 .
        . 1 1 1 1 1 1"""),
    )
    assert torch.equal(padding_mask(torch.tensor([[0, 0, 1]])), torch.tensor([[False, False, True]]))


@st.composite
def batches(draw, max_batch: int = 3, max_length: int = 9):
    """A left-padded batch: per row, padding, then prefix (type 0), then suffix (type 1)."""
    batch, length = draw(st.integers(1, max_batch)), draw(st.integers(1, max_length))
    masks, types = [], []
    for _ in range(batch):
        pad = draw(st.integers(0, length - 1))
        suffix = draw(st.integers(0, length - pad))
        masks.append([0] * pad + [1] * (length - pad))
        types.append([0] * (length - suffix) + [1] * suffix)
    return torch.tensor(masks), torch.tensor(types)


def transformers_prefill_mask(build, config, attention_mask, token_type_ids) -> torch.Tensor:
    """The boolean mask transformers' PaliGemma builds with `build` for a prompt (no cache): image and
    prefix (type 0) see each other both ways."""
    config._attn_implementation = "sdpa"  # the boolean form of the mask
    b, t = token_type_ids.shape
    return build(
        config=config,
        inputs_embeds=torch.zeros(b, t, config.hidden_size),
        attention_mask=attention_mask,
        past_key_values=None,
        position_ids=torch.arange(t)[None] + 1,
        block_sequence_ids=torch.where(token_type_ids == 0, 0, -1),
    )


@settings(max_examples=30, deadline=None)
@given(batch=batches())
def test_matches_transformers_paligemma_mask(batch):
    """transformers' PaliGemma: causal, or both tokens typed 0 (block id 0), and never a padding key."""
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import create_causal_mask

    attention_mask, token_type_ids = batch
    config = transformers.GemmaConfig(hidden_size=8, num_attention_heads=2, head_dim=4)
    theirs = transformers_prefill_mask(create_causal_mask, config, attention_mask, token_type_ids)
    t = token_type_ids.shape[1]
    assert torch.equal(decoder_mask(t, t, attention_mask, token_type_ids), theirs)


def test_matches_transformers_when_decoding_one_token_after_a_cache():
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import create_causal_mask

    config = transformers.GemmaConfig(hidden_size=8, num_attention_heads=2, head_dim=4, num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    cache = transformers.DynamicCache(config=config)
    cache.update(torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4), 0)  # 5 cached tokens
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    theirs = create_causal_mask(
        config=config,
        inputs_embeds=torch.zeros(2, 1, 8),
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=torch.tensor([[6]]),
    )
    ours = decoder_mask(1, 6, attention_mask, torch.ones(2, 1, dtype=torch.long))
    assert torch.equal(ours, theirs.expand_as(ours))


@settings(max_examples=30, deadline=None)
@given(batch=batches(), data=st.data())
def test_the_rows_of_new_tokens_after_a_cache_equal_the_full_mask(batch, data):
    """What a cache needs: computing the last rows alone gives the rows of the full mask."""
    attention_mask, token_type_ids = batch
    length = token_type_ids.shape[1]
    # New tokens are either one token, or any number of suffix tokens (a prefix cannot be split:
    # an earlier prefix token would have to see later ones).
    suffix_length = int((token_type_ids == 1).all(0).sum())
    new = data.draw(st.integers(1, max(1, suffix_length)))
    full = decoder_mask(length, length, attention_mask, token_type_ids)
    rows = decoder_mask(new, length, attention_mask, token_type_ids[:, length - new :])
    assert torch.equal(rows, full[:, :, length - new :])


@settings(max_examples=30, deadline=None)
@given(batch=batches())
def test_prefix_lm_structure(batch):
    attention_mask, token_type_ids = batch
    length = token_type_ids.shape[1]
    mask = decoder_mask(length, length, attention_mask, token_type_ids)[:, 0]  # (B, T, S)
    real = attention_mask.bool()
    prefix = (token_type_ids == 0) & real
    for b in range(mask.shape[0]):
        assert not mask[b][:, ~real[b]].any()  # no query sees padding
        assert mask[b].diagonal()[real[b]].all()  # every real token sees itself
        assert mask[b][prefix[b]][:, prefix[b]].all()  # image + prefix: all pairs, both ways
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        suffix_rows = (token_type_ids[b] == 1)[:, None] & future
        assert not mask[b][suffix_rows].any()  # the suffix never sees the future


def test_sliding_window_worked_example():
    """The module docstring's example and sliding_window_mask's."""
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ]
    ).bool()
    mask = decoder_mask(6, 6, token_type_ids=torch.tensor([[0, 0, 0, 0, 1, 1]]), sliding_window=2)
    assert torch.equal(mask[0, 0], expected)
    band = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]).bool()
    assert torch.equal(sliding_window_mask(5, 5, 3), band)
    assert torch.equal(causal_mask(5, 5, sliding_window=3), band & causal_mask(5, 5))
    assert torch.equal(sliding_window_mask(2, 5, 3), band[3:])  # after a cache of 3: the last rows


@settings(max_examples=30, deadline=None)
@given(batch=batches(), window=st.integers(1, 6))
def test_sliding_mask_matches_transformers_paligemma2(batch, window):
    """transformers' PaliGemma 2 sliding layers: (causal and in the window) or both tokens typed 0, never padding."""
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import create_sliding_window_causal_mask

    attention_mask, token_type_ids = batch
    config = transformers.Gemma2Config(hidden_size=8, num_attention_heads=2, head_dim=4, sliding_window=window)
    theirs = transformers_prefill_mask(create_sliding_window_causal_mask, config, attention_mask, token_type_ids)
    t = token_type_ids.shape[1]
    ours = decoder_mask(t, t, attention_mask, token_type_ids, sliding_window=window)
    if theirs is None:  # transformers skips a mask that lets every query see every key
        theirs = torch.ones_like(ours)
    assert torch.equal(ours, theirs.expand_as(ours))


def test_one_new_token_after_a_cache_sees_only_the_window():
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    mask = decoder_mask(1, 6, attention_mask, torch.ones(2, 1, dtype=torch.long), sliding_window=3)
    assert mask[:, 0, 0].int().tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert decoder_mask(1, 6, sliding_window=3, batch_size=2)[:, 0, 0].int().tolist() == [[0, 0, 0, 1, 1, 1]] * 2
