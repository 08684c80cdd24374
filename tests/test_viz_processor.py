"""Figures of chapter "The PaliGemma processor": token roles, strips, image stages, boxes, widget."""

import ipywidgets as widgets
import matplotlib
import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pgemma import world  # noqa: E402
from pgemma.processor import PaliGemmaProcessor  # noqa: E402
from pgemma.samples import sample_photo  # noqa: E402
from pgemma.tokenizer import train_tokenizer  # noqa: E402
from pgemma.viz.processor import (  # noqa: E402
    plot_boxes,
    plot_channel_planes,
    plot_image_stages,
    plot_loss_positions,
    plot_pixel_histograms,
    plot_token_strip,
    plot_world_example,
    token_roles,
)
from pgemma.viz.widgets import choice_slider, dropdown, interactive_figure  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(world.text_corpus(num_scenes=50), vocab_size=1300)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return PaliGemmaProcessor(tokenizer, image_size=32, num_image_tokens=16, max_length=128)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def two_examples():
    return [world.example(1, task="caption"), world.example(0, task="detect")]


def test_token_roles_follow_the_prompt_layout(processor, tokenizer):
    examples = two_examples()
    batch = processor([e.image for e in examples], [e.prefix for e in examples], [e.suffix for e in examples])
    roles = token_roles(batch, 0, tokenizer)  # the caption row is the shorter one: left padding
    suffix_length = len(tokenizer.encode(examples[0].suffix))
    prompt_length = len(tokenizer.encode(examples[0].prefix))
    padding = batch.input_ids.shape[1] - (16 + 1 + prompt_length + 1 + suffix_length + 1)
    assert padding > 0
    assert roles == (
        ["padding"] * padding
        + ["image"] * 16
        + ["bos"]
        + ["prompt"] * prompt_length
        + ["newline"]
        + ["suffix"] * suffix_length
        + ["eos"]
    )
    assert "padding" not in token_roles(batch, 1, tokenizer)


def test_token_strip_draws_one_cell_per_token_and_one_for_the_image_run(processor, tokenizer):
    examples = two_examples()
    batch = processor([e.image for e in examples], [e.prefix for e in examples], [e.suffix for e in examples])
    figure = plot_token_strip(batch, tokenizer)
    ax = figure.axes[0]
    cells = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    B, T = batch.input_ids.shape
    assert len(cells) == B * (T - 16 + 1)  # the 16 <image> tokens of each row are one cell
    texts = [text.get_text() for text in ax.texts]
    assert texts.count("<image>\u00d716") == B
    assert texts.count("-100") > 0 and "<eos>" in texts
    assert {"attention_mask", "token_type_ids", "labels"} <= set(texts)
    without_labels = plot_token_strip(processor([e.image for e in examples], [e.prefix for e in examples]), tokenizer)
    assert "labels" not in [text.get_text() for text in without_labels.axes[0].texts]


def test_image_figures_show_each_stage():
    processor = PaliGemmaProcessor(train_tokenizer(["a"], vocab_size=1200), 224, 256)
    photo = sample_photo()
    stages = plot_image_stages(photo, processor)
    titles = [ax.get_title() for ax in stages.axes]
    assert titles[0] == "original: 512 x 600, uint8" and "224 x 224" in titles[1]
    normalized = stages.axes[3].images[0].get_array()
    assert normalized.min() >= -1 and normalized.max() <= 1 and normalized.min() < -0.9
    histograms = plot_pixel_histograms(photo, processor)
    assert "range [-1.00, 1.00]" in histograms.axes[2].get_title()
    assert "range [0.00, 255.00]" in histograms.axes[0].get_title()
    planes = plot_channel_planes(processor.preprocess_image(photo))
    assert "(3, 224, 224)" in planes.texts[0].get_text()
    with pytest.raises(ValueError, match="float\\[3, I, I\\]"):
        plot_channel_planes(torch.zeros(224, 224, 3))


def test_boxes_are_drawn_where_they_are(processor):
    image = Image.new("RGB", (64, 64))
    figure = plot_boxes(image, [((10, 20, 30, 50), "a")], [((10.0, 20.0, 30.0, 50.0), "a")])
    boxes = [patch for patch in figure.axes[0].patches if isinstance(patch, Rectangle)]
    assert [(box.get_x(), box.get_y(), box.get_width(), box.get_height()) for box in boxes] == [(20, 10, 30, 20)] * 2
    assert [box.get_linestyle() for box in boxes] == ["-", "--"]


def test_loss_positions_puts_bars_under_cells(processor, tokenizer):
    item = world.example(0, task="detect")
    batch = processor(item.image, item.prefix, item.suffix)
    gradient = torch.arange(batch.input_ids.shape[1], dtype=torch.float32)
    figure = plot_loss_positions(batch, tokenizer, gradient)
    bars = figure.axes[1].patches
    assert len(bars) == batch.input_ids.shape[1] - 16 + 1
    assert bars[0].get_height() == 15  # the image cell shows the largest of its 16 positions
    with pytest.raises(ValueError, match="one-example batch with labels"):
        plot_loss_positions(processor(item.image, item.prefix), tokenizer, gradient)


def test_world_example_decodes_the_answer_boxes(processor):
    figure = plot_world_example(0, "detect", processor)
    image_ax = figure.axes[0]
    dashed = [p for p in image_ax.patches if isinstance(p, Rectangle) and p.get_linestyle() == "--"]
    scene = world.example(0, task="detect").scene
    assert sorted((p.get_y(), p.get_x()) for p in dashed) == sorted((s.box[0], s.box[1]) for s in scene.shapes)
    caption = plot_world_example(1, "caption", processor)
    assert not [p for p in caption.axes[0].patches if isinstance(p, Rectangle)]


def test_widget_redraws_world_examples(processor):
    drawn = []

    def draw(seed, task):
        drawn.append((seed, task))
        return plot_world_example(seed, task, processor)

    box = interactive_figure(
        draw, seed=choice_slider("scene seed", [3, 7], value=3), task=dropdown("task", ["detect", "count"])
    )
    assert isinstance(box, widgets.VBox)
    every_state = [(3, "detect"), (3, "count"), (7, "detect"), (7, "count")]
    assert drawn == every_state + [(3, "detect")]  # each state once for the page, then the live figure
    controls, _ = box.children
    controls.children[1].value = "count"
    assert drawn[-1] == (3, "count")
