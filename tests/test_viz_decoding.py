"""Chapter "Choosing the next token": the distributions the model chooses from, and what each setting keeps."""

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from pgemma.generate import Sampling, filter_logits, generate  # noqa: E402
from pgemma.shipped import SHIPPED_WORLD, load_shipped_model  # noqa: E402
from pgemma.viz.decoding import (  # noqa: E402
    DROPPED_COLOR,
    KEPT_COLOR,
    answer_logits,
    entropy,
    plot_decoding_tradeoff,
    plot_entropy_vs_temperature,
    plot_next_token,
    token_names,
)
from pgemma.viz.paligemma import heldout_seed  # noqa: E402
from pgemma.world import example  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_model()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bars(ax: plt.Axes) -> list[tuple[float, tuple]]:
    return [(patch.get_height(), tuple(patch.get_facecolor())) for patch in ax.patches]


def test_entropy_is_zero_for_a_certain_token_and_ln_v_for_the_uniform_distribution():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(entropy(probs), torch.tensor([0.0, math.log(4), math.log(2)]))


def test_token_names_are_the_text_of_every_id(shipped):
    _, processor = shipped
    tokenizer = processor.tokenizer
    names = token_names(tokenizer)
    assert len(names) == tokenizer.vocab_size
    assert names[tokenizer.eos_id] == "<eos>" and "<loc0112>" in names and " circle" in names


def test_answer_logits_are_what_greedy_decoding_chose_from(shipped):
    model, processor = shipped
    item = example(heldout_seed(0), SHIPPED_WORLD, task="caption")
    answer = generate(model, processor, item.image, item.prefix)[0]
    steps = answer_logits(model, processor, item.image, item.prefix, answer)
    tokenizer = processor.tokenizer
    assert steps.ids.tolist() == tokenizer.encode(answer) + [tokenizer.eos_id]
    assert "".join(steps.tokens) == answer + "<eos>"
    assert steps.logits.shape == (len(steps.ids), tokenizer.vocab_size)
    # Teacher-forced on the model's own greedy answer, every row's argmax is the token it wrote.
    assert torch.equal(steps.logits.argmax(-1), steps.ids)
    # The first row is the prompt's last position, the distribution of the first answer token.
    batch = processor(item.image, item.prefix)
    with torch.no_grad():
        prompt_only = model(batch.input_ids, batch.pixel_values, batch.attention_mask, batch.token_type_ids)
    torch.testing.assert_close(steps.logits[0], prompt_only.logits[0, -1, : tokenizer.vocab_size])


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (1.0, 3, None), (0.5, None, 0.8), (2.0, 5, 0.9), (1.0, 1, None)],
)
def test_next_token_bars_colour_what_filter_logits_keeps(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = 3 * torch.randn(40)  # (V,)
    names = [f"t{i}" for i in range(40)]
    figure = plot_next_token(logits, names, temperature, top_k, top_p, shown=8)
    left, right = figure.axes
    order = (logits / temperature).argsort(descending=True)
    filtered = filter_logits(logits[None], Sampling(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    kept = torch.isfinite(filtered[0])
    before, after = bars(left), bars(right)
    assert len(before) == len(after) == 9  # 8 tokens and "other 32"
    expected_colors = [to_rgba(KEPT_COLOR if kept[i] else DROPPED_COLOR) for i in order[:8].tolist()]
    assert [color for _, color in before[:8]] == expected_colors
    probs = (logits / temperature).softmax(-1)
    assert [h for h, _ in before[:8]] == pytest.approx(probs[order[:8]].tolist(), abs=1e-6)
    assert before[8][0] == pytest.approx(probs[order[8:]].sum().item(), abs=1e-6)  # the other 32 together
    assert sum(h for h, _ in after) == pytest.approx(1.0, abs=1e-5)
    assert [h for h, _ in after[:8]] == pytest.approx(filtered[0].softmax(-1)[order[:8]].tolist(), abs=1e-6)
    assert f"{int(kept.sum())} of 40 tokens kept" in right.get_title()
    assert [label.get_text() for label in left.get_xticklabels()][:2] == [names[i] for i in order[:2].tolist()]


def test_next_token_marks_p_and_quotes_tokens_with_spaces():
    logits = torch.tensor([2.0, 1.0, 0.0])
    figure = plot_next_token(logits, [" circle", "red", " "], top_p=0.5)
    left, _ = figure.axes
    assert [label.get_text() for label in left.get_xticklabels()] == ["' circle'", "red", "' '"]
    assert any(line.get_label() == "p = 0.5" for line in left.lines)


def test_next_token_refuses_names_that_do_not_match_the_logits():
    with pytest.raises(ValueError, match="V names"):
        plot_next_token(torch.zeros(5), ["a", "b"])
    with pytest.raises(ValueError, match="V names"):
        plot_next_token(torch.zeros(2, 5), ["a"] * 5)


def test_entropy_against_temperature_rises_to_ln_v():
    logits = {"a": torch.tensor([4.0, 1.0, 0.0, -1.0]), "b": torch.tensor([0.5, 0.4, 0.0, 0.0])}
    temperatures = [0.1, 1.0, 100.0]
    figure = plot_entropy_vs_temperature(logits, temperatures)
    (ax,) = figure.axes
    line_a = ax.lines[0]
    expected = [entropy((logits["a"] / t).softmax(-1)).item() for t in temperatures]
    assert list(line_a.get_ydata()) == pytest.approx(expected)
    assert expected[0] < 0.01 and expected[-1] == pytest.approx(math.log(4), abs=1e-2)
    assert any(line.get_ydata()[0] == pytest.approx(math.log(4)) for line in ax.lines[2:])
    with pytest.raises(ValueError, match="> 0"):
        plot_entropy_vs_temperature(logits, [0.0, 1.0])


def test_tradeoff_draws_one_line_per_metric_and_series():
    temperatures = [0.0, 1.0, 2.0]
    quality = {"no top-p": {"caption exact": [1.0, 0.9, 0.5]}, "top-p 0.9": {"caption exact": [1.0, 0.95, 0.9]}}
    diversity = {"no top-p": {"caption": [1.0, 1.2, 3.0]}, "top-p 0.9": {"caption": [1.0, 1.0, 1.5]}}
    figure = plot_decoding_tradeoff(temperatures, quality, diversity)
    left, right = figure.axes
    assert [list(line.get_ydata()) for line in left.lines] == [[1.0, 0.9, 0.5], [1.0, 0.95, 0.9]]
    assert [line.get_linestyle() for line in right.lines] == ["-", "--"]
    assert left.lines[0].get_color() == left.lines[1].get_color()  # one colour per metric
    assert [label.get_text() for label in left.get_xticklabels()] == ["greedy", "1", "2"]
    with pytest.raises(ValueError, match="2 values for 3 temperatures"):
        plot_decoding_tradeoff(temperatures, {"s": {"m": [1.0, 2.0]}}, diversity)
