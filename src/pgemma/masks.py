"""Attention masks as data: pure functions that return ``bool`` tensors (True = may attend).

Book chapter: "Attention masks: causal, prefix-LM and padding" (PaliGemma paper, Beyer et al. 2024,
section 3.2, "prefix-LM"; big_vision's ``make_attn_mask``).

Rows are queries, columns are keys. Worked example for one sequence of 2 image tokens (``i``),
a prefix of 2 text tokens (``p``: BOS + prompt + "\\n") and a suffix of 2 tokens (``s``: answer +
EOS), ``token_type_ids = [0, 0, 0, 0, 1, 1]``::

                 prefix_lm_mask        causal_mask(6, 6)
    keys ->      i i p p s s           i i p p s s
    query  i     1 1 1 1 . .           1 . . . . .
           i     1 1 1 1 . .           1 1 . . . .
           p     1 1 1 1 . .           1 1 1 . . .
           p     1 1 1 1 . .           1 1 1 1 . .
           s     1 1 1 1 1 .           1 1 1 1 1 .
           s     1 1 1 1 1 1           1 1 1 1 1 1

Image and prefix see each other both ways; the suffix sees everything before it and itself.

Gemma 2 (PaliGemma 2) has a second mask for its sliding-window layers: the causal part keeps only
the last ``sliding_window`` keys of each query (``sliding_window_mask``), the prefix still sees
itself both ways, however long it is (as transformers: sliding causal mask OR the prefix block).
With a window of 2 on the sequence above::

                 decoder_mask(6, 6, token_type_ids=..., sliding_window=2)
    keys ->      i i p p s s
    query  i     1 1 1 1 . .
           i     1 1 1 1 . .
           p     1 1 1 1 . .
           p     1 1 1 1 . .
           s     . . . 1 1 .
           s     . . . . 1 1

With one token of left padding (``x``, ``attention_mask = [0, 1, 1, 1, 1, 1, 1]``, typed 0 as
transformers' processor pads) no query sees the padding key. The padding query's own row follows
the same rules; it is never read, and transformers leaves it the same way::

    keys ->      x i i p p s s
    query  x     . 1 1 1 1 . .
           i     . 1 1 1 1 . .
           ...
           s     . 1 1 1 1 1 1
"""

import torch


def causal_mask(
    query_length: int, key_length: int, device: torch.device | str = "cpu", sliding_window: int | None = None
) -> torch.Tensor:
    """Each query sees the keys up to and including its own position.

    The queries are the last ``query_length`` of ``key_length`` tokens, so with a KV cache holding
    ``key_length - query_length`` tokens the first query sits at that offset. Example, 2 new
    queries after 3 cached keys, ``causal_mask(2, 5)``::

        1 1 1 1 .
        1 1 1 1 1

    With ``sliding_window=W``, only the last W of those keys (``sliding_window_mask``).

    Returns:
        bool[T, S].
    """
    offset = key_length - query_length
    query_index = torch.arange(query_length, device=device)[:, None] + offset  # (T, 1)
    key_index = torch.arange(key_length, device=device)[None, :]  # (1, S)
    mask = key_index <= query_index  # (T, S)
    if sliding_window is not None:
        mask = mask & sliding_window_mask(query_length, key_length, sliding_window, device)
    return mask


def sliding_window_mask(
    query_length: int, key_length: int, sliding_window: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Keys fewer than ``sliding_window`` positions before the query (and every later key).

    Gemma 2's local attention: ANDed with the causal mask, a query sees itself and the
    ``sliding_window - 1`` keys before it. Queries are the last ``query_length`` of ``key_length``
    tokens, as in ``causal_mask``. Example, ``sliding_window_mask(5, 5, 3)`` and its AND with
    ``causal_mask(5, 5)``::

        sliding_window_mask      & causal_mask
        1 1 1 1 1                1 . . . .
        1 1 1 1 1                1 1 . . .
        1 1 1 1 1                1 1 1 . .
        . 1 1 1 1                . 1 1 1 .
        . . 1 1 1                . . 1 1 1

    Returns:
        bool[T, S].
    """
    offset = key_length - query_length
    query_index = torch.arange(query_length, device=device)[:, None] + offset  # (T, 1)
    key_index = torch.arange(key_length, device=device)[None, :]  # (1, S)
    return key_index > query_index - sliding_window  # (T, S)


def prefix_lm_mask(
    token_type_ids: torch.Tensor, key_length: int | None = None, sliding_window: int | None = None
) -> torch.Tensor:
    """Causal attention, plus both-ways attention among the image+prefix tokens (type 0).

    Args:
        token_type_ids: int[B, T], 0 = image or prefix, 1 = suffix (as transformers' PaliGemma).
        key_length: S, the number of keys including a cache before these queries; default T.
            Cached keys are always in the past, so only the new tokens' types matter.
        sliding_window: W, to limit the causal part to the last W keys (Gemma 2's sliding
            layers); the prefix still sees all of itself.
    Returns:
        bool[B, T, S].

    Example, ``token_type_ids = [[0, 0, 0, 1, 1]]``::

        1 1 1 . .
        1 1 1 . .
        1 1 1 . .
        1 1 1 1 .
        1 1 1 1 1
    """
    query_length = token_type_ids.shape[1]
    key_length = query_length if key_length is None else key_length
    offset = key_length - query_length
    causal = causal_mask(query_length, key_length, token_type_ids.device, sliding_window)  # (T, S)
    is_prefix = token_type_ids == 0  # (B, T)
    # Both query and key are prefix tokens. Keys in the cache (the first `offset`) already count as
    # visible through `causal`, so the new tokens' types decide the rest.
    both_prefix = torch.zeros(
        token_type_ids.shape[0], query_length, key_length, dtype=torch.bool, device=token_type_ids.device
    )  # (B, T, S)
    both_prefix[:, :, offset:] = is_prefix[:, :, None] & is_prefix[:, None, :]
    return causal[None] | both_prefix  # (B, T, S)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Keys that are real tokens: transformers' ``attention_mask`` (1 = token, 0 = padding) as bool.

    Example, left padding of 2: ``[[0, 0, 1, 1, 1]] -> [[F, F, T, T, T]]``.

    Returns:
        bool[B, S].
    """
    return attention_mask != 0


def decoder_mask(
    query_length: int,
    key_length: int,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    sliding_window: int | None = None,
) -> torch.Tensor:
    """The mask the Gemma decoder uses: (prefix-LM or causal) and not a padding key.

    Args:
        query_length: T, the tokens being computed (the last T of the S keys).
        key_length: S, cached tokens + T.
        attention_mask: int[B, S] (1 = token, 0 = padding) or None for no padding.
        token_type_ids: int[B, T] for the new tokens, or None for plain causal attention.
        batch_size, device: used when neither tensor is given.
        sliding_window: W for the mask of Gemma 2's sliding-window layers: the causal part keeps the
            last W keys of each query (see the module docstring); None: the whole context.
    Returns:
        bool[B, 1, T, S]; the 1 broadcasts over heads.
    """
    if query_length == 1 and attention_mask is not None and sliding_window is None:
        # One new token after the cache (a decode step) is the last token: causal and prefix-LM
        # rules both let it see every key, so only padding is masked.
        return padding_mask(attention_mask)[:, None, None, :]  # (B, 1, 1, S)
    if token_type_ids is not None:
        mask = prefix_lm_mask(token_type_ids, key_length, sliding_window)  # (B, T, S)
    else:
        causal = causal_mask(query_length, key_length, device, sliding_window)  # (T, S)
        mask = causal[None].expand(batch_size, -1, -1)  # (B, T, S)
    if attention_mask is not None:
        mask = mask & padding_mask(attention_mask)[:, None, :]  # (B, T, S)
    return mask[:, None]  # (B, 1, T, S)
