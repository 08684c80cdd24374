"""Tests for pgemma.train: the recipe, the data of a step, the loop and its checkpoints, both stages,
evaluation and the command line."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from pgemma.processor import PaliGemmaProcessor
from pgemma.train import loop
from pgemma.train.__main__ import main
from pgemma.train.data import forward, patch_labels, process, training_examples
from pgemma.train.evaluation import evaluate
from pgemma.train.loop import load_state, lr_at, make_optimizer, save_state, train_loop
from pgemma.train.recipe import Recipe, StageConfig, build_model, build_tokenizer, init_loc_embeddings
from pgemma.train.stage0 import TowerPretrainer
from pgemma.world import WorldConfig, example

RECIPE = Recipe.tiny()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(RECIPE.world, RECIPE.model.vocab_size)


def fresh_model(tokenizer):
    torch.manual_seed(0)
    return build_model(RECIPE.model, RECIPE.world, tokenizer)


def processor_of(model, tokenizer):
    return PaliGemmaProcessor.from_config(model.config, tokenizer)


def prefix_lm_loss(model, processor, cfg, record=None):
    def loss_fn(step):
        batch = process(processor, training_examples(step, RECIPE.world, cfg, stage=1))
        loss = forward(model, batch, labels=batch.labels).loss
        if record is not None:
            record.append(loss.item())
        return loss

    return loss_fn


def test_first_loss_is_near_uniform(tokenizer):
    model = fresh_model(tokenizer)
    batch = process(processor_of(model, tokenizer), [example(s, RECIPE.world) for s in range(8)])
    loss = forward(model, batch, labels=batch.labels).loss
    assert abs(loss.item() - torch.log(torch.tensor(float(tokenizer.vocab_size)))) < 1.0


def test_short_training_lowers_the_loss(tokenizer, tmp_path):
    model = fresh_model(tokenizer)
    cfg = StageConfig(steps=60, batch_size=8, lr=3e-3, warmup=5, checkpoint_every=1000)
    losses = []
    train_loop(
        "test",
        model,
        prefix_lm_loss(model, processor_of(model, tokenizer), cfg, losses),
        cfg,
        tmp_path / "state.safetensors",
    )
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_resuming_continues_exactly_like_an_uninterrupted_run(tokenizer, tmp_path):
    cfg = StageConfig(steps=12, batch_size=4, lr=3e-3, warmup=3, checkpoint_every=5)
    straight = fresh_model(tokenizer)
    train_loop(
        "straight",
        straight,
        prefix_lm_loss(straight, processor_of(straight, tokenizer), cfg),
        cfg,
        tmp_path / "straight.safetensors",
    )

    interrupted = fresh_model(tokenizer)
    crashing = prefix_lm_loss(interrupted, processor_of(interrupted, tokenizer), cfg)

    def crash_at_step_7(step):
        if step == 7:
            raise KeyboardInterrupt
        return crashing(step)

    with pytest.raises(KeyboardInterrupt):
        train_loop("interrupted", interrupted, crash_at_step_7, cfg, tmp_path / "resumed.safetensors")
    resumed = fresh_model(tokenizer)  # a new process: nothing but the checkpoint at step 5 survives
    train_loop(
        "resumed",
        resumed,
        prefix_lm_loss(resumed, processor_of(resumed, tokenizer), cfg),
        cfg,
        tmp_path / "resumed.safetensors",
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tokenizer, tmp_path, monkeypatch):
    model = fresh_model(tokenizer)
    optimizer = make_optimizer(model, RECIPE.stage1)
    path = tmp_path / "state.safetensors"
    save_state(path, model, optimizer, 10, {"curve": []})
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def write_half_then_die(tensors, filename, metadata):
        with open(filename, "wb") as file:
            file.write(b"\x00" * 1000)  # a torn write
        raise OSError("disk full")

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.setattr(loop, "save_file", write_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, model, optimizer, 20, {"curve": []})
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"

    restored = fresh_model(tokenizer)
    step, info = load_state(path, restored, make_optimizer(restored, RECIPE.stage1))
    assert step == 10 and info == {"curve": []}
    for name, value in restored.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)


def test_learning_rate_warms_up_then_decays():
    cfg = StageConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(100, cfg) == pytest.approx(0.0)
    assert lr_at(80, replace(cfg, schedule="constant")) == 1.0


def test_patch_labels_follow_the_drawn_shapes():
    world = WorldConfig()
    examples = [example(seed, world) for seed in range(4)]
    colour, kind, box = patch_labels(examples, world, patch=8)  # (B, P), (B, P), (B, P, 4)
    assert colour.shape == kind.shape == (4, 64) and box.shape == (4, 64, 4)
    for ex, kinds, boxes in zip(examples, kind, box):
        shape = ex.scene.shapes[0]
        y0, x0, y1, x1 = shape.box
        centre = ((y0 + y1) // 2 // 8) * 8 + (x0 + x1) // 2 // 8  # the patch holding the centre
        assert kinds[centre] == world.kinds.index(shape.kind) + 1
        torch.testing.assert_close(boxes[centre], torch.tensor(shape.box, dtype=torch.float32) / 64)
        assert (kinds > 0).sum() <= sum((s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s in ex.scene.shapes) / 8


def test_stage0_loss_runs_on_the_tower(tokenizer):
    model = fresh_model(tokenizer)
    pretrainer = TowerPretrainer(
        model.vision_tower, RECIPE.world, tokenizer.vocab_size, model.config.vision_config.hidden_size
    )
    processor = processor_of(model, tokenizer)
    loss = pretrainer.loss(
        [example(s, RECIPE.world) for s in range(4)], processor, RECIPE.world, RECIPE.model.patch_size, 1.0
    )
    loss.backward()
    assert model.vision_tower.vision_model.embeddings.patch_embedding.weight.grad is not None
    assert model.language_model.model.embed_tokens.weight.grad is None


def test_neighbouring_loc_bins_start_similar(tokenizer):
    model = fresh_model(tokenizer)
    init_loc_embeddings(model, tokenizer)
    table = model.language_model.model.embed_tokens.weight

    def loc(b):
        return table[tokenizer.token_to_id(f"<loc{b:04d}>")]

    cos = torch.nn.functional.cosine_similarity
    assert cos(loc(500), loc(501), dim=0) > 0.98
    assert cos(loc(500), loc(516), dim=0) > cos(loc(500), loc(700), dim=0)


def test_evaluate_reports_every_task(tokenizer):
    model = fresh_model(tokenizer)
    scores = evaluate(model, processor_of(model, tokenizer), RECIPE.world, num_scenes=4, batch_size=2)
    assert set(scores) == {"caption_exact", "colour_exact", "count_exact", "detect_exact", "detect_iou"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_the_command_line_trains_exports_and_resumes(tmp_path, capsys):
    main(["--recipe", "tiny", "--out", str(tmp_path), "--eval-scenes", "8"])
    printed = capsys.readouterr().out
    for name in ("caption_exact", "colour_exact", "count_exact", "detect_iou"):
        assert name in printed
    model_folder = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_folder.iterdir()}
    written = (model_folder / "model.safetensors").read_bytes()
    main(["--recipe", "tiny", "--out", str(tmp_path), "--eval-scenes", "8"])  # resumes: nothing left to train
    assert (model_folder / "model.safetensors").read_bytes() == written


def test_python_m_pgemma_train_is_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "pgemma.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pgemma.train") and "--out OUT" in result.stdout
