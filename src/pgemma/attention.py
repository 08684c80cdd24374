"""Scaled dot-product attention as pure functions: one readable path, one fast path.

Book chapter: "Multi-head attention" (Vaswani et al. 2017, section 3.2; grouped-query attention: Ainslie et
al. 2023; multi-query attention: Shazeer 2019). The masks it consumes are built in ``masks.py``.

A mask is a ``bool`` tensor, ``True`` where a query may look at a key. The readable path computes
scores, masks them, takes a float32 softmax and averages the values. ``use_sdpa=True`` calls
``torch.nn.functional.scaled_dot_product_attention`` on the same tensors instead; the two agree on
every query that can see at least one key (see ``attention``'s note for the other rows).

Gemma 2 changes two numbers: the scale of the scores (``scale``) and a tanh soft-cap on them
(``softcap``, Gemma Team 2024b). SDPA has no soft-cap, so with one the explicit path is always taken.
"""

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Give each of the G = N / K query heads of a group its own copy of the group's kv head.

    Args:
        x: float[B, K, S, H] keys or values.
        n_rep: G, query heads per kv head.
    Returns:
        float[B, K * G, S, H]: kv head k is repeated for query heads k*G ... k*G + G - 1.
    """
    if n_rep == 1:
        return x
    batch, kv_heads, length, head_dim = x.shape
    x = x[:, :, None].expand(batch, kv_heads, n_rep, length, head_dim)  # (B, K, G, S, H)
    return x.reshape(batch, kv_heads * n_rep, length, head_dim)  # (B, N, S, H)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    use_sdpa: bool = False,
    return_weights: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(H), masked) v, with K kv heads shared by N query heads.

    Args:
        q: float[B, N, T, H] queries.
        k, v: float[B, K, S, H] keys and values; K must divide N (K = N: multi-head,
            K = 1: multi-query, otherwise grouped-query attention).
        mask: bool[B, 1, T, S] (or anything broadcasting to it), True = may attend; None = all.
        use_sdpa: call PyTorch's fused kernel instead of the explicit computation; ignored when
            ``softcap`` is set (the kernel cannot cap), the explicit path is taken then.
        return_weights: also return the attention weights (explicit path only).
        scale: what the scores q k^T are multiplied by; None: 1 / sqrt(H).
        softcap: c to squash the scaled scores into (-c, c) by c * tanh(scores / c) before the
            mask (Gemma 2); None: no capping.
    Returns:
        float[B, N, T, H], and with ``return_weights`` the weights float[B, N, T, S] (rows sum to 1).
    Note: a query that may see no key at all (a left-padding position whose keys are all padding)
    gets uniform weights over all keys on the explicit path, exactly like transformers' eager path;
    SDPA returns zeros there. Such rows are padding and never read by real tokens.
    """
    if use_sdpa and softcap is None:
        if return_weights:
            raise ValueError("return_weights=True needs the explicit path (use_sdpa=False)")
        # enable_gqa: the kernel reads each kv head for its G query heads, without copying it G times.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, N, S, H)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, N, T, S)
    if softcap is not None:
        scores = soft_cap(scores, softcap)
    if mask is not None:
        # The most negative finite number rather than -inf: its exp is 0 next to any visible key,
        # and a fully masked row stays finite (uniform) instead of becoming NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # Softmax in float32 even for bfloat16 activations: exp and the row sum lose too much otherwise.
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # (B, N, T, S)
    out = torch.matmul(weights, v)  # (B, N, T, H)
    return (out, weights) if return_weights else out


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): about x where |x| is small next to cap, never beyond +-cap.

    Gemma 2 caps its attention scores and its output logits this way (in this order of operations,
    as transformers does, so that the rounding is the same).
    """
    return torch.tanh(x / cap) * cap
