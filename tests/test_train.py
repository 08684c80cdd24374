"""Tests for pgemma.train: the recipe, the data of a step, the loop and its checkpoints, both stages,
evaluation and the command line."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pgemma.processor import PaliGemmaProcessor
from pgemma.train import loop
from pgemma.train.__main__ import main
from pgemma.train.data import forward, patch_labels, process, training_examples
from pgemma.train.evaluation import evaluate
from pgemma.train.loop import (
    DamagedCheckpointError,
    load_state,
    lr_at,
    make_optimizer,
    previous_checkpoint,
    save_state,
    train_loop,
)
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


@pytest.mark.slow
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

    path = tmp_path / "straight.safetensors"  # saved at steps 5, 10 and 12
    os.replace(previous_checkpoint(path), path)  # back to step 10, as a damaged checkpoint's message says
    from_previous = fresh_model(tokenizer)
    train_loop(
        "again", from_previous, prefix_lm_loss(from_previous, processor_of(from_previous, tokenizer), cfg), cfg, path
    )
    for (name, a), b in zip(straight.state_dict().items(), from_previous.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tokenizer, tmp_path, monkeypatch):
    model = fresh_model(tokenizer)
    optimizer = make_optimizer(model, RECIPE.stage1)
    path = tmp_path / "state.safetensors"
    save_state(path, model, optimizer, 10, {"curve": []})
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def write_half_then_die(file, data):
        with open(file, "wb") as handle:
            handle.write(data[:1000])  # a torn write
        raise OSError("disk full")

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.setattr(Path, "write_bytes", write_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, model, optimizer, 20, {"curve": []})
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"

    restored = fresh_model(tokenizer)
    step, info = load_state(path, restored, make_optimizer(restored, RECIPE.stage1))
    assert step == 10 and info == {"curve": []}
    for name, value in restored.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)


def trained_state(tokenizer, path, steps=(10,)):
    """A model, its optimizer after a few real steps (so AdamW has moments), saved at each of `steps`."""
    model = fresh_model(tokenizer)
    optimizer = make_optimizer(model, RECIPE.stage1)
    loss_fn = prefix_lm_loss(model, processor_of(model, tokenizer), RECIPE.stage1)
    for step in steps:
        optimizer.zero_grad()
        loss_fn(step).backward()
        optimizer.step()
        save_state(path, model, optimizer, step, {"curve": [step]})
    return model, optimizer


def rewrite(path, change):
    """Write the checkpoint at `path` again with `change(tensors)` applied, metadata as it was."""
    with safe_open(str(path), framework="pt") as file:
        tensors, metadata = {key: file.get_tensor(key) for key in file.keys()}, file.metadata()
    change(tensors)
    save_file(tensors, path, metadata=metadata)


def overwrite(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset if offset >= 0 else os.path.getsize(path) + offset)
        file.write(data)


DAMAGES = {
    "truncated": lambda p: os.truncate(p, os.path.getsize(p) // 2),
    "empty": lambda p: os.truncate(p, 0),
    "garbage": lambda p: p.write_bytes(bytes(range(256)) * 64),
    "wrong header size": lambda p: overwrite(p, 0, (10**12).to_bytes(8, "little")),
    "header not JSON": lambda p: overwrite(p, 8, b"#"),
    "bytes overwritten in a tensor": lambda p: overwrite(p, -2000, b"\x7f" * 64),
    "missing weight": lambda p: rewrite(p, lambda t: t.pop(next(k for k in t if k.startswith("model.")))),
    "missing AdamW moment": lambda p: rewrite(p, lambda t: t.pop("optim.3.exp_avg_sq")),
    "missing RNG state": lambda p: rewrite(p, lambda t: t.pop("rng.torch")),
    "weight of the wrong shape": lambda p: rewrite(p, lambda t: t.update({k: t[k][:-1] for k in list(t)[:1]})),
    "moment of the wrong shape": lambda p: rewrite(p, lambda t: t.update({"optim.0.exp_avg": torch.zeros(3)})),
    "no training metadata": lambda p: save_file({"model.x": torch.zeros(2)}, p, metadata={"format": "pt"}),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_what_to_do(tokenizer, tmp_path, damage):
    path = tmp_path / "stage1.safetensors"
    trained_state(tokenizer, path)
    damage(path)
    model = fresh_model(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DamagedCheckpointError) as error:
        load_state(path, model, make_optimizer(model, RECIPE.stage1))
    assert str(path) in str(error.value) and f"delete {path}" in str(error.value)
    for name, value in model.state_dict().items():  # refused before anything was loaded
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_each_save_keeps_the_checkpoint_before_it(tokenizer, tmp_path):
    path = tmp_path / "stage1.safetensors"
    trained_state(tokenizer, path, steps=(10, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1.safetensors", "stage1.safetensors.prev"]

    os.truncate(path, 100)
    model = fresh_model(tokenizer)
    with pytest.raises(
        DamagedCheckpointError, match="step 10.* renaming stage1.safetensors.prev to stage1.safetensors"
    ):
        load_state(path, model, make_optimizer(model, RECIPE.stage1))
    os.replace(previous_checkpoint(path), path)
    assert load_state(path, model, make_optimizer(model, RECIPE.stage1)) == (10, {"curve": [10]})


def test_the_message_says_when_the_previous_checkpoint_is_damaged_too(tokenizer, tmp_path):
    path = tmp_path / "state.safetensors"
    trained_state(tokenizer, path, steps=(10, 20))
    os.truncate(path, 100)
    os.truncate(previous_checkpoint(path), 100)
    model = fresh_model(tokenizer)
    with pytest.raises(
        DamagedCheckpointError, match="state.safetensors.prev, the checkpoint saved before it, is damaged"
    ):
        load_state(path, model, make_optimizer(model, RECIPE.stage1))


def test_a_crash_while_keeping_the_previous_checkpoint_changes_nothing(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "state.safetensors"
    model, optimizer = trained_state(tokenizer, path, steps=(10, 20))
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def copy_half_then_die(source, destination):
        Path(destination).write_bytes(Path(source).read_bytes()[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(loop.shutil, "copyfile", copy_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, model, optimizer, 30, {"curve": []})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved, "no temporary file, both checkpoints whole"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_get_the_permissions_of_any_new_file(tokenizer, tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = tmp_path / "state.safetensors"
        trained_state(tokenizer, path, steps=(10, 20))
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["plain", "state.safetensors", "state.safetensors.prev"], 0o666 & ~umask)


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


@pytest.mark.slow
def test_the_command_line_trains_exports_and_resumes(tmp_path, capsys):
    main(["--recipe", "tiny", "--out", str(tmp_path), "--eval-scenes", "8"])
    printed = capsys.readouterr().out
    for name in ("caption_exact", "colour_exact", "count_exact", "detect_iou"):
        assert name in printed
    model_folder = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_folder.iterdir()}
    written = (model_folder / "model.safetensors").read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()} == dict.fromkeys(
        [".lock", "recipe.json", "curves.json", "stage0.safetensors", "stage0.safetensors.prev"]
        + ["stage1.safetensors", "stage1.safetensors.prev"],
        0o666 & ~umask,
    )
    main(["--recipe", "tiny", "--out", str(tmp_path), "--eval-scenes", "8"])  # resumes: nothing left to train
    assert (model_folder / "model.safetensors").read_bytes() == written


def test_python_m_pgemma_train_is_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "pgemma.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pgemma.train") and "--out OUT" in result.stdout
