"""Chapter "Assembling PaliGemma": parameter counts, decoder attention weights, answer figures."""

import ipywidgets as widgets
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pgemma.config import IGNORE_INDEX, PaliGemmaConfig  # noqa: E402
from pgemma.loc_tokens import boxes_to_loc_tokens  # noqa: E402
from pgemma.masks import decoder_mask  # noqa: E402
from pgemma.paligemma import PaliGemmaForConditionalGeneration  # noqa: E402
from pgemma.processor import PaliGemmaProcessor  # noqa: E402
from pgemma.rope import rope_cos_sin  # noqa: E402
from pgemma.train.recipe import Recipe, build_model, build_tokenizer  # noqa: E402
from pgemma.viz.paligemma import (  # noqa: E402
    PARTS,
    answer_attention,
    describe_answer,
    heldout_seed,
    parameter_counts,
    plot_answer_attention,
    plot_answers,
    plot_loss_curve,
    plot_parameter_counts,
    plot_scene_answer,
    plot_training_curves,
)
from pgemma.viz.widgets import choice_slider, dropdown, interactive_figure  # noqa: E402
from pgemma.world import HELDOUT_START, example  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    recipe = Recipe.tiny()
    tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
    model = build_model(recipe.model, recipe.world, tokenizer).eval()
    return model, PaliGemmaProcessor.from_config(model.config, tokenizer), recipe.world


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_parameter_counts_of_paligemma_3b_on_the_meta_device():
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.paligemma_3b_224())
    counts = parameter_counts(model)
    assert counts["embedding (= output head)"] == 257216 * 2048
    assert counts["projector"] == 1152 * 2048 + 2048
    assert 2.9e9 < sum(counts.values()) < 2.95e9  # "3B": the tied head is not counted twice


def test_gemma_attention_weights_do_not_change_the_output(tiny):
    model, _, _ = tiny
    layer = model.language_model.model.layers[0]
    assert layer.self_attn.use_sdpa  # the weights come from the explicit path all the same
    x = torch.randn(2, 7, model.config.text_config.hidden_size)
    text = model.config.text_config
    cos, sin = rope_cos_sin(torch.arange(1, 8)[None].expand(2, 7), text.head_dim, text.rope_theta, x.dtype)
    mask = decoder_mask(7, 7, None, torch.tensor([[0, 0, 0, 0, 1, 1, 1]] * 2), 2, "cpu")
    plain, attentions = layer.self_attn(x, cos, sin, mask, None, 0), []
    out = layer.self_attn(x, cos, sin, mask, None, 0, attentions)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    (weights,) = attentions
    assert weights.shape == (2, text.num_attention_heads, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, text.num_attention_heads, 7))
    assert (weights[0, :, 4, 5:] == 0).all() and (weights[0, :, 0, :4] > 0).all()  # prefix-LM mask


def test_answer_attention_rows_are_the_answer_tokens(tiny):
    model, processor, world = tiny
    item = example(heldout_seed(0), world, task="caption")
    attention = answer_attention(model, processor, item.image, item.prefix, item.suffix)
    answer_ids = processor.tokenizer.encode(item.suffix)
    layers, patches = model.config.text_config.num_hidden_layers, model.num_image_tokens
    assert attention.tokens[-1] == "<eos>" and len(attention.tokens) == len(answer_ids) + 1
    assert "".join(attention.tokens[:-1]) == item.suffix
    assert attention.patches.shape == (layers, len(answer_ids) + 1, patches)
    assert (attention.patches >= 0).all() and (attention.image_share <= 1 + 1e-6).all()
    torch.testing.assert_close(attention.image_share, attention.patches.sum(-1))


def test_answer_attention_is_each_layers_attention_on_its_input(tiny):
    model, processor, world = tiny
    item = example(heldout_seed(1), world, task="caption")
    attention = answer_attention(model, processor, item.image, item.prefix, item.suffix)
    batch = processor(item.image, item.prefix, item.suffix)
    ids, length = batch.input_ids, batch.input_ids.shape[1]
    with torch.no_grad():  # each layer's attention re-run by hand on that layer's input
        output = model(ids, batch.pixel_values, batch.attention_mask, batch.token_type_ids, output_hidden_states=True)
        states, text = output.hidden_states.decoder, model.config.text_config
        cos, sin = rope_cos_sin(torch.arange(1, length + 1)[None], text.head_dim, text.rope_theta, states[0].dtype)
        mask = decoder_mask(length, length, batch.attention_mask, batch.token_type_ids, 1, ids.device)
        writers = torch.nonzero(batch.labels[0, 1:] != IGNORE_INDEX)[:, 0]  # (A,)
        is_image = ids[0] == model.config.image_token_index  # (S,)
        for index, layer in enumerate(model.language_model.model.layers):
            weights = []
            layer.self_attn(layer.input_layernorm(states[index]), cos, sin, mask, None, index, weights)
            expected = weights[0][0].mean(0)[writers][:, is_image]  # (A, P)
            torch.testing.assert_close(attention.patches[index], expected, atol=1e-5, rtol=1e-5)


def test_describe_answer_scores_text_and_boxes():
    assert describe_answer("red", "red", 64) == ("red", True)
    assert describe_answer("blue", "red", 64) == ("blue (expected: red)", False)
    truth = boxes_to_loc_tokens((8, 8, 40, 40), 64) + " square"
    assert describe_answer(truth, truth, 64) == ("square box, IoU 1.00", True)
    shifted = boxes_to_loc_tokens((24, 24, 56, 56), 64) + " square"
    text, good = describe_answer(shifted, truth, 64)
    assert text == "square box, IoU 0.14" and not good
    assert describe_answer("a circle", truth, 64) == ("square box, IoU 0.00", False)


def test_heldout_seed():
    assert heldout_seed(0) == HELDOUT_START and heldout_seed(5) == HELDOUT_START + 5
    with pytest.raises(ValueError, match="index must be >= 0"):
        heldout_seed(-1)


def test_figures(tiny):
    model, processor, world = tiny
    counts = parameter_counts(model)
    figure = plot_parameter_counts({"tiny": counts, "again": counts})
    assert len(figure.axes) == 2 and [t.get_text() for t in figure.axes[0].get_yticklabels()] == list(PARTS)
    figure = plot_loss_curve([7.0, 5.0, 3.0, 2.0], vocab_size=1200, window=2)
    assert len(figure.axes[0].lines) == 3
    record = {
        "runs": [
            {"name": "a", "stage1": [{"step": 10, "count_exact": 0.5}, {"step": 20, "count_exact": 0.9}]},
            {"name": "b"},
        ]
    }
    figure = plot_training_curves(record, "stage1", {"count_exact": "count", "detect_iou": "IoU"}, highlight="a")
    assert len(figure.axes) == 2 and list(figure.axes[0].lines[0].get_ydata()) == [0.5, 0.9]
    items = [example(heldout_seed(i), world, task=task) for i, task in enumerate(("caption", "detect", "count"))]
    figure = plot_answers(
        [e.image for e in items],
        [e.prefix for e in items],
        [e.suffix for e in items],
        [e.suffix for e in items],
        columns=2,
    )
    assert len(figure.axes) == 4 and figure.axes[1].patches  # the detection's boxes
    assert all(ax.title.get_color() == "#2a7d2a" for ax in figure.axes[:3])
    attention = answer_attention(model, processor, items[0].image, items[0].prefix, items[0].suffix)
    figure = plot_answer_attention(items[0].image, attention, layer=0)
    assert len(figure.axes) == 1 + len(attention.tokens)


@pytest.mark.slow  # draws every state of the widget: a generation each
def test_scene_widget(tiny):
    model, processor, world = tiny
    figure = plot_scene_answer(model, processor, 2, "count", world)
    assert "held-out scene 2" in figure.axes[0].get_title()
    box = interactive_figure(
        lambda index, task: plot_scene_answer(model, processor, index, task, world),
        index=choice_slider("scene", [2, 5], value=2),
        task=dropdown("task", ["count", "colour"]),
    )
    assert isinstance(box, widgets.VBox)
