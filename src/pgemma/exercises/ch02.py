"""Exercises of chapter 2, "Contrastive learning": expected answers, solutions, mistakes."""

import math

import torch

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register


def negative_pairs_at_1024() -> int:
    """2.1: every (image, caption) pair of the batch but the B matching ones."""
    batch = 1024
    return batch * batch - batch


def sigmoid_loss_at_zero_similarity() -> float:
    """2.2: every logit is t * 0 + b = -10, so each of the B positives costs -log sigmoid(-10)
    (about 10) and each of the B^2 - B negatives -log sigmoid(10) (about 4.5e-5); divide by B."""
    batch, bias = 1024, -10.0
    positive = math.log1p(math.exp(-bias))  # -log sigmoid(b) = log(1 + e^-b)
    negative = math.log1p(math.exp(bias))  # -log sigmoid(-b) = log(1 + e^b)
    return (batch * positive + (batch * batch - batch) * negative) / batch


def sigmoid_loss_positives_only() -> float:
    """A mistake for 2.2: the positives alone, as if the negatives cost nothing."""
    return math.log1p(math.exp(10.0))


def softmax_last_axis(logits: torch.Tensor) -> torch.Tensor:
    """PyTorch's softmax over the last axis, which the checker of 2.3 compares with."""
    return torch.softmax(logits, dim=-1)


def stable_softmax(logits: torch.Tensor) -> torch.Tensor:
    """2.3: subtract each row's maximum before `exp`; the softmax does not change."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values  # (..., V), every entry <= 0
    exps = shifted.exp()  # (..., V), the largest is exactly 1
    return exps / exps.sum(dim=-1, keepdim=True)


def naive_softmax(logits: torch.Tensor) -> torch.Tensor:
    """A mistake for 2.3: `exp` of logits of several hundred overflows to inf, and inf / inf is nan."""
    return logits.exp() / logits.exp().sum(dim=-1, keepdim=True)


def unseen_logits() -> list[tuple[torch.Tensor]]:
    """Logits of several shapes, from ordinary sizes to far beyond float32's `exp` range."""
    generator = torch.Generator().manual_seed(202)
    shapes_and_scales = [((3, 5), 1.0), ((4, 7), 300.0), ((2, 3, 6), 1000.0), ((10,), 50.0)]
    return [(torch.randn(shape, generator=generator) * scale,) for shape, scale in shapes_and_scales]


def row_logsumexp(logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """PyTorch's log-sum-exp of each row, which the checker of 2.4 compares with (whole rows)."""
    return torch.logsumexp(logits, dim=1)


def running_logsumexp(logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """2.4: the log-sum-exp of each row, reading `chunk_size` columns at a time.

    Keep the largest logit seen so far, m, and the sum of exp(l - m) so far, s. When a chunk
    brings a larger maximum m', the sum kept so far is rescaled: s * exp(m - m').
    """
    rows = len(logits)
    running_max = torch.full((rows,), -math.inf)  # (B,)
    running_sum = torch.zeros(rows)  # (B,)
    for chunk in logits.split(chunk_size, dim=1):  # (B, c)
        new_max = torch.maximum(running_max, chunk.max(dim=1).values)  # (B,)
        running_sum = running_sum * (running_max - new_max).exp() + (chunk - new_max[:, None]).exp().sum(dim=1)
        running_max = new_max
    return running_max + running_sum.log()


def running_logsumexp_without_rescaling(logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """A mistake for 2.4: each chunk is shifted by the new maximum, but the sum kept so far is
    not rescaled when the maximum grows."""
    rows = len(logits)
    running_max = torch.full((rows,), -math.inf)  # (B,)
    running_sum = torch.zeros(rows)  # (B,)
    for chunk in logits.split(chunk_size, dim=1):  # (B, c)
        running_max = torch.maximum(running_max, chunk.max(dim=1).values)  # (B,)
        running_sum = running_sum + (chunk - running_max[:, None]).exp().sum(dim=1)
    return running_max + running_sum.log()


def unseen_logit_blocks() -> list[tuple[torch.Tensor, int]]:
    """Rows of logits up to several hundred, read in chunks that divide the row or do not."""
    generator = torch.Generator().manual_seed(204)
    cases = [((4, 12), 10.0, 3), ((3, 10), 400.0, 4), ((5, 9), 100.0, 1), ((2, 6), 30.0, 6)]
    return [(torch.randn(shape, generator=generator) * scale, chunk) for shape, scale, chunk in cases]


def loss_compared(baseline_loss: float, experiment_loss: float) -> str:
    """2.5: what the run measured: the held-out softmax loss at the changed batch size against B = 8.

    At B = 128 the loss is larger although retrieval is better. Each row of the loss is a guess
    among B captions: a uniform guess costs log B (2.08 at B = 8, 4.85 at B = 128), so the loss of
    different batch sizes is measured on different scales. And with 18 possible captions, a row of
    a batch of 128 shares its caption with about 7 other rows (8.1 rows in all, on average, against
    1.4 at B = 8): the copies have the same text embedding, so its own column can get at most about
    1/8 of the row's softmax, and that direction of the loss cannot fall below about log 8. The
    larger batch is the harder game, and playing it teaches the towers more.
    """
    if math.isclose(experiment_loss, baseline_loss, rel_tol=1e-3):
        return "the same"
    return "larger" if experiment_loss > baseline_loss else "smaller"


def batch_experiment() -> dict[str, float]:
    """The measurements of the chapter's run, rounded: B = 8 (the default), then B = 128."""
    return {"baseline_loss": 1.41, "experiment_loss": 3.26}


register(
    ValueExercise("2.1", expected=negative_pairs_at_1024, wrong=lambda: 1024 * 1024),
    ValueExercise("2.2", expected=sigmoid_loss_at_zero_similarity, wrong=sigmoid_loss_positives_only, tolerance=1e-3),
    CodingExercise(
        "2.3",
        reference=softmax_last_axis,
        inputs=unseen_logits,
        solution_function=stable_softmax,
        wrong_function=naive_softmax,
    ),
    CodingExercise(
        "2.4",
        reference=row_logsumexp,
        inputs=unseen_logit_blocks,
        solution_function=running_logsumexp,
        wrong_function=running_logsumexp_without_rescaling,
        tolerance=1e-4,
    ),
    ExperimentExercise(
        "2.5",
        outcome=loss_compared,
        choices=("larger", "smaller", "the same"),
        example_context=batch_experiment,
    ),
)
