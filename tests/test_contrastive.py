"""Contrastive losses: straightforward formulas, chunked and ring versions equal to the plain one."""

import math

import pytest
import torch
import torch.nn.functional as F

from pgemma.config import SiglipVisionConfig
from pgemma.contrastive import (
    INIT_BIAS,
    INIT_LOG_TEMPERATURE,
    ContrastiveImageTower,
    ContrastiveTextTower,
    SiglipMultiheadAttentionPoolingHead,
    chunked_clip_loss,
    chunked_sigmoid_loss,
    clip_loss,
    mean_pool,
    peak_memory,
    run_ring_sigmoid_loss,
    sigmoid_loss,
)


def embeddings(batch: int, width: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, width, generator=generator), dim=-1)  # (B, E)
    # Captions close to their images, so that the loss is not dominated by noise.
    text = F.normalize(image + 0.5 * torch.randn(batch, width, generator=generator), dim=-1)  # (B, E)
    return image, text


def loss_and_grads(
    loss_fn, image: torch.Tensor, text: torch.Tensor, log_t: float = INIT_LOG_TEMPERATURE, bias: float = INIT_BIAS
) -> list[torch.Tensor]:
    leaves = [
        image.clone().requires_grad_(),
        text.clone().requires_grad_(),
        torch.tensor(log_t, requires_grad=True),
        torch.tensor(bias, requires_grad=True),
    ]
    loss = loss_fn(*leaves)
    loss.backward()
    return [loss.detach()] + [leaf.grad for leaf in leaves]


def test_clip_loss_matches_the_formula_with_loops():
    image, text = embeddings(6)
    log_t = torch.tensor(math.log(20.0))
    logits = (image @ text.T * 20.0).tolist()
    rows = [-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(6)]
    cols = [-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(6))) for j in range(6)]
    expected = (sum(rows) / 6 + sum(cols) / 6) / 2
    assert clip_loss(image, text, log_t).item() == pytest.approx(expected, rel=1e-5)


def test_clip_loss_is_symmetric_in_images_and_texts():
    image, text = embeddings(8)
    log_t = torch.tensor(1.0)
    torch.testing.assert_close(clip_loss(image, text, log_t), clip_loss(text, image, log_t))


def test_sigmoid_loss_matches_the_formula_with_loops():
    image, text = embeddings(5)
    t, b = 10.0, -10.0
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            logit = t * float(image[i] @ text[j]) + b
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    loss = sigmoid_loss(image, text, torch.tensor(math.log(t)), torch.tensor(b))
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)


def test_sigmoid_loss_initial_value_is_small_with_the_negative_bias():
    image, text = embeddings(32)
    with_bias = sigmoid_loss(image, text, torch.tensor(INIT_LOG_TEMPERATURE), torch.tensor(INIT_BIAS))
    without = sigmoid_loss(image, text, torch.tensor(INIT_LOG_TEMPERATURE), torch.tensor(0.0))
    assert with_bias < without / 5


@pytest.mark.parametrize("batch, chunk", [(12, 5), (16, 4), (9, 1), (8, 8), (7, 100)])
def test_chunked_sigmoid_loss_equals_plain_loss_and_gradients(batch, chunk):
    image, text = embeddings(batch)
    plain = loss_and_grads(sigmoid_loss, image, text, log_t=1.3, bias=-2.0)
    chunked = loss_and_grads(lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk), image, text, log_t=1.3, bias=-2.0)
    for expected, actual in zip(plain, chunked):
        torch.testing.assert_close(actual, expected)


def test_chunked_sigmoid_loss_gradcheck_in_float64():
    image, text = (e.double().requires_grad_() for e in embeddings(6))
    log_t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: chunked_sigmoid_loss(*a, chunk_size=4), (image, text, log_t, bias))


def test_chunked_loss_peak_memory_grows_slower_than_plain():
    image, text = embeddings(256)
    plain = peak_memory(lambda: loss_and_grads(sigmoid_loss, image, text))
    chunked = peak_memory(lambda: loss_and_grads(lambda *a: chunked_sigmoid_loss(*a, chunk_size=16), image, text))
    matrix = 256 * 256 * 4  # one float32 B x B matrix
    assert plain >= 2 * matrix  # logits and more are alive at once
    assert chunked < plain / 5  # a few B x 16 blocks and the embeddings


def clip_loss_and_grads(loss_fn, image: torch.Tensor, text: torch.Tensor, log_t: float) -> list[torch.Tensor]:
    """The loss and the gradients of a CLIP loss (no bias), through `loss_and_grads`."""
    return loss_and_grads(lambda i, t, log_t, bias: loss_fn(i, t, log_t), image, text, log_t=log_t)[:4]


@pytest.mark.parametrize("batch, chunk", [(12, 5), (16, 4), (9, 1), (8, 8), (7, 100)])
def test_chunked_clip_loss_equals_plain_loss_and_gradients(batch, chunk):
    image, text = embeddings(batch, seed=batch)
    plain = clip_loss_and_grads(clip_loss, image, text, log_t=2.5)
    chunked = clip_loss_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=chunk), image, text, log_t=2.5)
    for expected, actual in zip(plain, chunked):
        torch.testing.assert_close(actual, expected)


def test_chunked_clip_loss_is_stable_at_large_logits():
    image, text = embeddings(10)
    plain = clip_loss_and_grads(clip_loss, image, text, log_t=math.log(500.0))  # logits up to 500: exp overflows
    chunked = clip_loss_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=3), image, text, log_t=math.log(500.0))
    assert all(torch.isfinite(value).all() for value in chunked)
    for expected, actual in zip(plain, chunked):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-3)  # float32 rounding of logits near 500


def test_chunked_clip_loss_gradcheck_in_float64():
    image, text = (e.double().requires_grad_() for e in embeddings(5, width=4))
    log_t = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: chunked_clip_loss(*a, chunk_size=2), (image, text, log_t))


def test_chunked_clip_loss_peak_memory_is_that_of_the_chunked_sigmoid_loss():
    image, text = embeddings(256)
    plain = peak_memory(lambda: clip_loss_and_grads(clip_loss, image, text, log_t=2.0))
    chunked = peak_memory(
        lambda: clip_loss_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=16), image, text, log_t=2.0)
    )
    sigmoid = peak_memory(lambda: loss_and_grads(lambda *a: chunked_sigmoid_loss(*a, chunk_size=16), image, text))
    assert chunked < plain / 5
    assert chunked < 1.5 * sigmoid  # a few B x 16 blocks, the embeddings and 2B normalizers


def test_chunked_clip_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        chunked_clip_loss(torch.zeros(4, 8), torch.zeros(4, 6), torch.tensor(0.0), 2)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_clip_loss(torch.zeros(4, 8), torch.zeros(4, 8), torch.tensor(0.0), 0)


def test_peak_memory_counts_live_tensors_and_ignores_views():
    def work():
        a = torch.ones(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new memory
        c = torch.ones(500)  # 2000 bytes, alive together with a
        del a, b, c
        torch.ones(100)  # 400 bytes after the others are freed

    assert peak_memory(work) == 6000


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_loss(torch.zeros(4, 8), torch.zeros(3, 8), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_sigmoid_loss(torch.zeros(4, 8), torch.zeros(4, 8), torch.tensor(0.0), torch.tensor(0.0), 0)
    with pytest.raises(ValueError, match="split evenly"):
        run_ring_sigmoid_loss(torch.zeros(5, 8), torch.zeros(5, 8), 0.0, 0.0, world_size=2)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ring_sigmoid_loss_on_processes_equals_plain_loss_and_gradients(world_size):
    image, text = embeddings(8)
    plain = loss_and_grads(sigmoid_loss, image, text, log_t=1.1, bias=-3.0)
    ring = run_ring_sigmoid_loss(image, text, 1.1, -3.0, world_size=world_size)
    for name, expected in zip(["loss", "image_grad", "text_grad", "log_t_grad", "bias_grad"], plain):
        torch.testing.assert_close(ring[name], expected, msg=name)


def test_mean_pool_shape_and_value():
    hidden = torch.arange(24.0).view(2, 3, 4)  # (B, P, D)
    torch.testing.assert_close(mean_pool(hidden), hidden[:, 1])


def test_attention_pooling_head_matches_transformers():
    modeling = pytest.importorskip("transformers.models.siglip.modeling_siglip")
    from transformers import SiglipVisionConfig as HFSiglipVisionConfig

    config = SiglipVisionConfig.tiny()
    torch.manual_seed(0)
    ours = SiglipMultiheadAttentionPoolingHead(config).eval()
    hf_config = HFSiglipVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu_pytorch_tanh",
    )
    theirs = modeling.SiglipMultiheadAttentionPoolingHead(hf_config).eval()
    theirs.load_state_dict(ours.state_dict())  # same parameter names, strict
    hidden = torch.randn(3, config.num_patches, config.hidden_size)  # (B, P, D)
    pooled, weights = ours(hidden, return_weights=True)
    assert pooled.shape == (3, config.hidden_size)
    assert weights.shape == (3, config.num_attention_heads, config.num_patches)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, config.num_attention_heads))
    torch.testing.assert_close(pooled, theirs(hidden), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "attention"])
def test_image_tower_gives_one_unit_vector_per_image(pooling):
    config = SiglipVisionConfig.tiny()
    tower = ContrastiveImageTower(config, embed_dim=24, pooling=pooling)
    out = tower(torch.randn(2, 3, config.image_size, config.image_size))
    assert out.shape == (2, 24)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_image_tower_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        ContrastiveImageTower(SiglipVisionConfig.tiny(), embed_dim=8, pooling="max")


def test_text_tower_gives_one_unit_vector_per_caption():
    tower = ContrastiveTextTower(SiglipVisionConfig.tiny(), vocab_size=30, max_length=10, embed_dim=24)
    out = tower(torch.randint(0, 30, (4, 7)))
    assert out.shape == (4, 24)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError, match="max_length"):
        tower(torch.zeros(1, 11, dtype=torch.long))


def test_figures_draw_and_the_sigmoid_pairs_title_is_the_loss():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from pgemma.viz import contrastive as viz

    image, text = embeddings(6)
    similarity = image @ text.T  # (B, B)
    figure = viz.plot_sigmoid_pairs(similarity, temperature=10.0, bias=-10.0)
    expected = sigmoid_loss(image, text, torch.tensor(math.log(10.0)), torch.tensor(-10.0)).item()
    assert figure.axes[1].get_title() == f"loss = {expected:.2f}"  # axes: probabilities, loss bars, colorbar
    figures = [
        figure,
        viz.plot_similarity_matrix(similarity, [f"c{i}" for i in range(6)]),
        viz.plot_softmax_directions(similarity * 5),
        viz.plot_cost_vs_batch([1, 2], {"a": [1.0, 4.0]}, ylabel="bytes", title="t"),
        viz.plot_attention_pooling(torch.zeros(3, 32, 32), torch.rand(2, 16), patch_size=8),
    ]
    retrieval = viz.plot_retrieval(
        [8, 32], {"softmax": [[0.1, 0.15], [0.2, 0.1]], "sigmoid": [[0.2, 0.25], [0.3, 0.3]]}, chance=0.05
    )
    assert [bar.get_height() for bar in retrieval.axes[0].patches] == pytest.approx([0.125, 0.15, 0.225, 0.3])  # means
    assert sum(len(dots.get_offsets()) for dots in retrieval.axes[0].collections) == 8  # one dot per seed
    figures.append(retrieval)
    for figure in figures:
        assert figure.axes
        matplotlib.pyplot.close(figure)
