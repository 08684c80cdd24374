"""Contrastive image-text learning: CLIP's softmax loss, SigLIP's sigmoid loss, and their costs.

Book chapter: "Contrastive learning: from CLIP's softmax to SigLIP's sigmoid" (CLIP, Radford et
al. 2021, figure 3; SigLIP, Zhai et al. 2023, algorithm 1 and section 3.3).

An image tower and a text tower map a batch of B matching (image, caption) pairs to
L2-normalized embeddings ``float[B, E]`` (E: the shared embedding width). Their dot products form
a B x B similarity matrix whose diagonal holds the matching pairs. The losses here push the
diagonal up and everything else down:

- ``clip_loss``: a softmax over each row and over each column (two cross-entropies);
- ``sigmoid_loss``: every entry is its own binary classification, "match or not";
- ``chunked_sigmoid_loss``: the same sum, a block of captions at a time, so that neither the
  forward nor the backward pass ever holds the whole B x B matrix;
- ``chunked_clip_loss``: CLIP's loss, a block of captions at a time, with a running log-sum-exp
  for each row; the backward pass sweeps the blocks again once every normalizer is known;
- ``ring_sigmoid_loss``: the same sum on D processes (``torch.distributed``), each holding B / D
  pairs, with the caption embeddings passed around a ring.

It also has the three ways of turning P patch vectors into one image embedding (mean, a CLS
token, SigLIP's attention-pooling head), the tiny image and text towers of the chapter's
experiment, and ``peak_memory``, which counts the bytes of live tensors while a function runs.

Not supported: the losses assume one caption per image and no duplicates; a duplicated caption
in a batch is treated as a negative, as in both papers.
"""

import math
import os
import tempfile
import weakref
from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pgemma.attention import attention
from pgemma.config import SiglipVisionConfig
from pgemma.siglip import SiglipEncoder, SiglipMLP, SiglipVisionEmbeddings

# SigLIP's initialization (Zhai et al. 2023, section 3.3): t = exp(t') starts at 10 and the bias
# at -10, so that the first predictions say "no match", which is right for B^2 - B of B^2 pairs.
INIT_LOG_TEMPERATURE = math.log(10.0)
INIT_BIAS = -10.0


# ----------------------------------------------------------------------------------------------
# The losses


def _check_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected image and text embeddings of the same shape (B, E), got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy: softmax over texts for each image, over images for each text.

    Args:
        image_emb, text_emb: float[B, E], L2-normalized; row i of each is the i-th matching pair.
        log_t: float[] the log of the temperature t (logits are t times the cosine similarity).
    Returns:
        float[], the mean of the two cross-entropies (CLIP's pseudo-code, figure 3).
    """
    _check_embeddings(image_emb, text_emb)
    logits = image_emb @ text_emb.T * log_t.exp()  # (B, B): row i = image i against every text
    labels = torch.arange(len(logits), device=logits.device)  # the match of row i is column i
    loss_images = F.cross_entropy(logits, labels)  # each row normalized over all B texts
    loss_texts = F.cross_entropy(logits.T, labels)  # each column normalized over all B images
    return (loss_images + loss_texts) / 2


def _pair_signs(rows: int, cols: int, positives_on_diagonal: bool, like: torch.Tensor) -> torch.Tensor:
    """float[rows, cols]: z = +1 on the diagonal when it holds the matching pairs, -1 elsewhere."""
    signs = -torch.ones(rows, cols, dtype=like.dtype, device=like.device)  # (Bi, Bt)
    if positives_on_diagonal:
        signs.diagonal().fill_(1.0)
    return signs


def _pair_loss_sum(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    log_t: torch.Tensor,
    bias: torch.Tensor,
    positives_on_diagonal: bool,
) -> torch.Tensor:
    """The sum of -log sigmoid(z * logit) over one block of pairs, float[] (SigLIP, algorithm 1)."""
    logits = image_emb @ text_emb.T * log_t.exp() + bias  # (Bi, Bt)
    signs = _pair_signs(*logits.shape, positives_on_diagonal, logits)  # (Bi, Bt)
    return -F.logsigmoid(signs * logits).sum()


class _RecomputedPairLossSum(torch.autograd.Function):
    """`_pair_loss_sum` whose backward recomputes the block instead of keeping it from forward.

    With l_ij = t <x_i, y_j> + b and L = -sum log sigmoid(z_ij l_ij), the gradient is
    dL/dl_ij = -z_ij sigmoid(-z_ij l_ij) =: g_ij, so dL/dx = t g y, dL/dy = t g^T x,
    dL/dt' = t sum g_ij <x_i, y_j> and dL/db = sum g_ij. Only the embeddings are saved: a block
    of logits lives only while its own forward or backward runs.
    """

    @staticmethod
    def forward(
        ctx,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        log_t: torch.Tensor,
        bias: torch.Tensor,
        positives_on_diagonal: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(image_emb, text_emb, log_t, bias)
        ctx.positives_on_diagonal = positives_on_diagonal
        return _pair_loss_sum(image_emb, text_emb, log_t, bias, positives_on_diagonal)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image_emb, text_emb, log_t, bias = ctx.saved_tensors
        temperature = log_t.exp()
        cosines = image_emb @ text_emb.T  # (Bi, Bt)
        signs = _pair_signs(*cosines.shape, ctx.positives_on_diagonal, cosines)  # (Bi, Bt)
        g = -signs * torch.sigmoid(-signs * (cosines * temperature + bias)) * grad_loss  # (Bi, Bt)
        return (
            temperature * g @ text_emb,
            temperature * g.T @ image_emb,
            temperature * (g * cosines).sum(),
            g.sum(),
            None,
        )


def sigmoid_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: L = -1/B sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)).

    Args:
        image_emb, text_emb: float[B, E], L2-normalized; row i of each is the i-th matching pair.
        log_t: float[] t' with t = exp(t') (initialized to log 10).
        bias: float[] b (initialized to -10).
    Returns:
        float[]. z_ij = +1 if i == j else -1. Divided by B (not B^2), as in the paper.
    """
    _check_embeddings(image_emb, text_emb)
    return _pair_loss_sum(image_emb, text_emb, log_t, bias, positives_on_diagonal=True) / len(image_emb)


def chunked_sigmoid_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor, bias: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """`sigmoid_loss`, computed `chunk_size` captions at a time: same value, same gradients.

    Each block of logits is recomputed during the backward pass instead of being kept from the
    forward pass, so at most one block of B x chunk_size is alive at any time: memory grows as
    B * chunk_size instead of B^2. The price is computing each block twice.
    """
    _check_embeddings(image_emb, text_emb)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of captions, got {chunk_size}")
    total = image_emb.new_zeros(())
    for start in range(0, len(text_emb), chunk_size):
        stop = min(start + chunk_size, len(text_emb))
        # The block's positives are its own square, rows and columns start..stop.
        total = total + _RecomputedPairLossSum.apply(image_emb[start:stop], text_emb[start:stop], log_t, bias, True)
        for rows in (slice(0, start), slice(stop, None)):  # the rest of the block: negatives only
            if rows.start != rows.stop:
                total = total + _RecomputedPairLossSum.apply(image_emb[rows], text_emb[start:stop], log_t, bias, False)
    return total / len(image_emb)


# ----------------------------------------------------------------------------------------------
# CLIP's softmax, chunked too


class _ChunkedClipLoss(torch.autograd.Function):
    """`clip_loss` in blocks of B x c logits (c captions), each computed once forward, once backward.

    With l_ij = t <x_i, y_j>, R_i = log sum_j exp(l_ij) (row i's normalizer, over every caption) and
    C_j = log sum_i exp(l_ij) (column j's, over every image), the loss is
    L = 1/2B sum_i [(R_i - l_ii) + (C_i - l_ii)] and its gradient is
    dL/dl_ij = (exp(l_ij - R_i) + exp(l_ij - C_j) - 2 [i == j]) / 2B =: g_ij.
    A block's gradient needs the finished R_i of all its rows: they are known only after the
    forward pass has seen every block, so the backward pass recomputes the blocks in a second
    sweep. Only the embeddings and the 2B normalizers are kept between the two.
    """

    @staticmethod
    def forward(
        ctx, image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor, chunk_size: int
    ) -> torch.Tensor:
        temperature, batch = log_t.exp(), len(image_emb)
        row_max = image_emb.new_full((batch,), -math.inf)  # (B,) the largest logit of each row so far
        row_sum = image_emb.new_zeros(batch)  # (B,) sum of exp(l_ij - row_max) over the captions so far
        col_lse = image_emb.new_empty(batch)  # (B,) C_j: a block holds its columns whole
        matches = image_emb.new_empty(batch)  # (B,) l_jj
        for start in range(0, batch, chunk_size):
            cols = slice(start, min(start + chunk_size, batch))
            block = image_emb @ text_emb[cols].T * temperature  # (B, c)
            # The running log-sum-exp: a larger maximum rescales the sum kept so far.
            new_max = torch.maximum(row_max, block.max(dim=1).values)  # (B,)
            row_sum = row_sum * (row_max - new_max).exp() + (block - new_max[:, None]).exp().sum(dim=1)
            row_max = new_max
            col_lse[cols] = block.logsumexp(dim=0)  # (c,)
            matches[cols] = block[cols].diagonal()  # (c,): rows start..stop hold this block's pairs
        row_lse = row_max + row_sum.log()  # (B,) R_i
        ctx.save_for_backward(image_emb, text_emb, log_t, row_lse, col_lse)
        ctx.chunk_size = chunk_size
        return ((row_lse - matches).mean() + (col_lse - matches).mean()) / 2

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image_emb, text_emb, log_t, row_lse, col_lse = ctx.saved_tensors
        temperature, batch = log_t.exp(), len(image_emb)
        grad_image = torch.zeros_like(image_emb)  # (B, E)
        grad_text = torch.empty_like(text_emb)  # (B, E)
        grad_log_t = torch.zeros_like(log_t)  # ()
        for start in range(0, batch, ctx.chunk_size):
            cols = slice(start, min(start + ctx.chunk_size, batch))
            block = image_emb @ text_emb[cols].T * temperature  # (B, c), recomputed
            g = (block - row_lse[:, None]).exp() + (block - col_lse[None, cols]).exp()  # (B, c)
            g[cols].diagonal().sub_(2.0)  # the matching pairs
            g = g * (grad_loss / (2 * batch))  # (B, c)
            grad_image += temperature * g @ text_emb[cols]  # (B, E)
            grad_text[cols] = temperature * g.T @ image_emb  # (c, E)
            grad_log_t += (g * block).sum()  # dl_ij/dt' = l_ij
        return grad_image, grad_text, grad_log_t, None


def chunked_clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """`clip_loss`, computed `chunk_size` captions at a time: same value, same gradients.

    Each row's normalizer is a log-sum-exp over all B captions, accumulated block by block (the
    max trick, with the maximum updated as blocks arrive); each column's lies whole in one block.
    At most one block of B x chunk_size is alive at any time, plus 2B normalizers, so memory grows
    as B * chunk_size, as for `chunked_sigmoid_loss`. The price: every block is computed twice,
    and its gradient can only be computed once every block has been seen (`_ChunkedClipLoss`).
    """
    _check_embeddings(image_emb, text_emb)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of captions, got {chunk_size}")
    return _ChunkedClipLoss.apply(image_emb, text_emb, log_t, chunk_size)


# ----------------------------------------------------------------------------------------------
# The ring: SigLIP's multi-device loss on torch.distributed


class _RingShift(torch.autograd.Function):
    """Send a tensor to the next process of the ring and receive the previous one's.

    Backward is the same move in the other direction: the gradient of what we received goes
    back to the process that sent it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _exchange(x, step=+1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _exchange(grad, step=-1)


def _exchange(x: torch.Tensor, step: int) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    received = torch.empty_like(x)
    # Post both sides before waiting: a blocking send on every process at once would deadlock.
    requests = dist.batch_isend_irecv(
        [
            dist.P2POp(dist.isend, x.contiguous(), (rank + step) % world),
            dist.P2POp(dist.irecv, received, (rank - step) % world),
        ]
    )
    for request in requests:
        request.wait()
    return received


def ring_sigmoid_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """This process's share of `sigmoid_loss` over the whole batch spread across D processes.

    Process r holds pairs r*b ... r*b + b - 1 (b = B / D, equal on every process). It first scores
    its own b x b block (the positives are on its diagonal), then D - 1 times passes the caption
    embeddings it holds to the next process and scores the arriving ones (negatives only). At
    any time a process holds one b x b block, never the B x B matrix (Zhai et al. 2023, 3.3).

    Args:
        image_emb, text_emb: float[b, E], this process's slice of the batch, L2-normalized.
        log_t, bias: float[] as in `sigmoid_loss`, the same on every process.
    Returns:
        float[]: the sum of the shares over processes (an all-reduce) is `sigmoid_loss` of the
        whole batch. Backward of each share gives each process the full gradient of its own
        embeddings (caption gradients travel back around the ring); the gradients of `log_t` and
        `bias` are partial and must be summed over processes, as DistributedDataParallel does.
    """
    _check_embeddings(image_emb, text_emb)
    world = dist.get_world_size()
    total = _RecomputedPairLossSum.apply(image_emb, text_emb, log_t, bias, True)
    for _ in range(world - 1):
        text_emb = _RingShift.apply(text_emb)  # (b, E): the previous process's captions
        total = total + _RecomputedPairLossSum.apply(image_emb, text_emb, log_t, bias, False)
    return total / (len(image_emb) * world)


def _ring_worker(
    rank: int,
    world: int,
    init_method: str,
    folder: str,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    log_t: float,
    bias: float,
) -> None:
    # One thread per process: each plays one device, and a forked process must not use the
    # parent's thread pool (fork copies none of its threads, and waiting for them hangs).
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        rows = slice(rank * len(image_emb) // world, (rank + 1) * len(image_emb) // world)
        image_part = image_emb[rows].clone().requires_grad_()  # (b, E): only this slice lives here
        text_part = text_emb[rows].clone().requires_grad_()  # (b, E)
        log_t_param = torch.tensor(log_t, requires_grad=True)
        bias_param = torch.tensor(bias, requires_grad=True)
        share = ring_sigmoid_loss(image_part, text_part, log_t_param, bias_param)
        share.backward()
        loss = share.detach().clone()
        scalar_grads = torch.stack([log_t_param.grad, bias_param.grad])  # (2,)
        dist.all_reduce(loss)  # sum of the shares: the loss of the whole batch
        dist.all_reduce(scalar_grads)  # what DistributedDataParallel would do for shared parameters
        torch.save(
            {
                "loss": loss,
                "image_grad": image_part.grad,
                "text_grad": text_part.grad,
                "log_t_grad": scalar_grads[0],
                "bias_grad": scalar_grads[1],
            },
            os.path.join(folder, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def run_ring_sigmoid_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, log_t: float, bias: float, world_size: int
) -> dict[str, torch.Tensor]:
    """Start `world_size` CPU processes (gloo backend), run `ring_sigmoid_loss` and its backward.

    A demonstration harness: the batch is split into equal slices, one per process, and the
    results are gathered back so they can be compared with `sigmoid_loss` on one process.

    Returns:
        "loss" float[], "image_grad" and "text_grad" float[B, E] (the slices' gradients
        concatenated), "log_t_grad" and "bias_grad" float[] (summed over processes).
    """
    _check_embeddings(image_emb, text_emb)
    if world_size < 1 or len(image_emb) % world_size:
        raise ValueError(f"the batch of {len(image_emb)} must split evenly over world_size={world_size} processes")
    with tempfile.TemporaryDirectory() as folder:
        init_method = "file://" + os.path.join(folder, "rendezvous")  # loopback: no network needed
        # Forked processes start in milliseconds with torch already imported; spawned ones (the
        # only choice on some systems) import everything again, which takes seconds.
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(
            _ring_worker,
            args=(world_size, init_method, folder, image_emb.detach(), text_emb.detach(), float(log_t), float(bias)),
            nprocs=world_size,
            join=True,
            start_method=start_method,
        )
        parts = [torch.load(os.path.join(folder, f"rank{rank}.pt")) for rank in range(world_size)]
    return {
        "loss": parts[0]["loss"],
        "image_grad": torch.cat([part["image_grad"] for part in parts]),
        "text_grad": torch.cat([part["text_grad"] for part in parts]),
        "log_t_grad": parts[0]["log_t_grad"],
        "bias_grad": parts[0]["bias_grad"],
    }


# ----------------------------------------------------------------------------------------------
# One embedding per image


def mean_pool(hidden: torch.Tensor) -> torch.Tensor:
    """float[B, P, D] -> float[B, D]: the average of the patch vectors."""
    return hidden.mean(dim=1)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """SigLIP's pooling: a learned probe query attends over the patches, then a residual MLP.

    Parameter names match transformers' class of the same name (``probe``,
    ``attention.in_proj_weight``, ``attention.out_proj``, ``layernorm``, ``mlp``); the attention
    itself is computed with `pgemma.attention.attention` so that its weights can be returned.
    """

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        # Only a holder for the q/k/v and output projections, with the checkpoint's names.
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(
        self, hidden: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """float[B, P, D] -> float[B, D]; with `return_weights`, also float[B, N, P], where the
        probe looks (each head's weights sum to 1 over the patches)."""
        batch, length, width = hidden.shape
        w_q, w_k, w_v = self.attention.in_proj_weight.chunk(3)  # (D, D) each
        b_q, b_k, b_v = self.attention.in_proj_bias.chunk(3)  # (D,) each
        q = F.linear(self.probe, w_q, b_q).view(1, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (1, N, 1, H)
        k = (
            F.linear(hidden, w_k, b_k).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, N, P, H)
        v = (
            F.linear(hidden, w_v, b_v).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, N, P, H)
        pooled, weights = attention(q.expand(batch, -1, -1, -1), k, v, return_weights=True)  # (B, N, 1, H)
        pooled = self.attention.out_proj(pooled.transpose(1, 2).reshape(batch, width))  # (B, D)
        pooled = pooled + self.mlp(self.layernorm(pooled))  # (B, D)
        return (pooled, weights[:, :, 0]) if return_weights else pooled


# ----------------------------------------------------------------------------------------------
# Tiny towers for the chapter's experiment

Pooling = Literal["mean", "cls", "attention"]


class ContrastiveImageTower(nn.Module):
    """pgemma's SigLIP encoder, one pooled vector per image, a projection to E, L2-normalized."""

    def __init__(self, config: SiglipVisionConfig, embed_dim: int, pooling: Pooling = "mean"):
        super().__init__()
        if pooling not in ("mean", "cls", "attention"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'attention', got {pooling!r}")
        self.pooling = pooling
        self.embeddings = SiglipVisionEmbeddings(config)
        # The CLS token is one more learned "patch", prepended; its output summarizes the image.
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size) * 0.02) if pooling == "cls" else None
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config) if pooling == "attention" else None
        self.projection = nn.Linear(config.hidden_size, embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """float[B, C, I, I] -> float[B, E], unit length."""
        x = self.embeddings(pixel_values)  # (B, P, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)  # (B, 1 + P, D)
        x = self.post_layernorm(self.encoder(x)[-1])  # (B, P or 1 + P, D)
        if self.pooling == "cls":
            pooled = x[:, 0]  # (B, D)
        elif self.pooling == "attention":
            pooled = self.head(x)  # (B, D)
        else:
            pooled = mean_pool(x)  # (B, D)
        return F.normalize(self.projection(pooled), dim=-1)  # (B, E)


class ContrastiveTextTower(nn.Module):
    """Token and position embeddings, the same pre-LN transformer encoder, mean pooling, projection.

    Like SigLIP's text tower, it reads fixed-length, padded captions without an attention mask:
    the padding is part of the input it learns to read.
    """

    def __init__(self, config: SiglipVisionConfig, vocab_size: int, max_length: int, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.randn(max_length, config.hidden_size) * 0.02)
        self.encoder = SiglipEncoder(config)
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """int[B, T] token ids (T <= max_length) -> float[B, E], unit length."""
        if ids.shape[1] > len(self.position_embedding):
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed max_length={len(self.position_embedding)}")
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, T, D)
        x = self.final_layernorm(self.encoder(x)[-1])  # (B, T, D)
        return F.normalize(self.projection(mean_pool(x)), dim=-1)  # (B, E)


# ----------------------------------------------------------------------------------------------
# Measuring memory on CPU


class _LiveBytes(TorchDispatchMode):
    """Adds up the storage bytes of every tensor an operation creates while they are alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.seen or storage.nbytes() == 0:
                continue  # a view of memory we already count
            self.seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def peak_memory(fn: Callable[[], object]) -> int:
    """The peak bytes of tensors created by `fn()` and alive at the same time (inputs excluded).

    Every operation PyTorch dispatches, forward and backward alike, is watched: each new storage
    is counted when it appears and uncounted when it is freed. CPU tensors only need no profiler.
    """
    with _LiveBytes() as counter:
        fn()
    return counter.peak
