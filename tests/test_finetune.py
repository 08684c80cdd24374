"""Tests for pgemma.train.finetune: the new task's data, what each mode trains, LoRA's adapter files,
resuming, the run folder's files, the command line and the chapter's record."""

import json
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors.torch import load_file

from pgemma.checkpoint import load_model
from pgemma.lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, load_adapter
from pgemma.processor import load_processor
from pgemma.train import finetune as ft
from pgemma.train.__main__ import main as train_main
from pgemma.train.data import forward, process
from pgemma.train.folder import RunFolderError
from pgemma.train.loop import load_state, make_optimizer
from pgemma.train.recipe import Recipe, StageConfig
from pgemma.world import TASKS, example
from tools.book import ROOT

RECIPE = Recipe.tiny()
STAGE = StageConfig(steps=4, batch_size=2, warmup=1, checkpoint_every=2, eval_every=2)


def settings(base: Path, mode: str, **changes) -> ft.FinetuneConfig:
    return ft.FinetuneConfig(base=str(base), mode=mode, rank=2, stage=STAGE, curve_scenes=2, **changes)


def run(cfg: ft.FinetuneConfig, out: Path) -> dict:
    return ft.finetune(cfg, out, eval_scenes=2)


def test_every_new_task_scene_holds_a_diamond_and_old_examples_come_from_the_old_world():
    new = ft.new_task_world(RECIPE.world)
    cfg = ft.FinetuneConfig(stage=replace(STAGE, batch_size=8), old_fraction=0.25)
    batch = ft.finetune_examples(3, cfg, new, RECIPE.world)
    assert len(batch) == 8
    assert all(ft.has_new_kind(ex.scene) for ex in batch[:6])
    assert batch[6:] == [example(seed, RECIPE.world) for seed in (ft.OLD_TASK_SEEDS + 24, ft.OLD_TASK_SEEDS + 25)]
    assert [ex.prefix for ex in ft.finetune_examples(3, cfg, new, RECIPE.world)] == [ex.prefix for ex in batch]
    assert {ex.scene.seed for ex in batch[:6]}.isdisjoint(
        ex.scene.seed for ex in ft.finetune_examples(4, cfg, new, RECIPE.world)
    )
    assert all(ft.has_new_kind(example(seed, new).scene) for seed in ft.heldout_seeds(new, 5, new_task=True))


def test_a_world_with_diamonds_already_is_refused():
    with pytest.raises(ValueError, match="diamonds already"):
        ft.new_task_world(ft.new_task_world(RECIPE.world))


def test_each_mode_trains_what_it_says(base):
    counts = {}
    for mode in ft.MODES:
        model = load_model(base)
        counts[mode] = ft.prepare(model, settings(base, mode))
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        if mode == "frozen-vision":
            assert trained and not any(name.startswith("vision_tower.") for name in trained)
        if mode == "lora":
            assert trained and all(name.endswith(("lora_A", "lora_B")) for name in trained)
    total = sum(p.numel() for p in load_model(base).parameters())
    tower = sum(p.numel() for p in load_model(base).vision_tower.parameters())
    text = RECIPE.model.text_width
    q_out, kv_out, mlp = RECIPE.model.text_heads * RECIPE.model.head_dim, RECIPE.model.head_dim, 4 * text
    per_layer = (text + q_out) * 2 + 2 * (text + kv_out) * 2 + (q_out + text) * 2 + 3 * (text + mlp) * 2  # r = 2
    assert counts == {"full": total, "frozen-vision": total - tower, "lora": RECIPE.model.text_layers * per_layer}


@pytest.mark.slow
def test_frozen_vision_keeps_the_tower_to_the_bit_and_full_changes_it(base, tmp_path):
    before = load_file(base / "model.safetensors")
    for mode in ("frozen-vision", "full"):
        run(settings(base, mode), tmp_path / mode)
        after = load_file(tmp_path / mode / ft.MODEL_FOLDER / "model.safetensors")
        tower = [key for key in before if key.startswith("vision_tower.")]
        decoder = [key for key in before if key.startswith("language_model.")]
        assert tower and decoder
        assert any(not torch.equal(before[key], after[key]) for key in decoder)
        changed_tower = [key for key in tower if not torch.equal(before[key], after[key])]
        assert (changed_tower == []) == (mode == "frozen-vision")


@pytest.mark.slow
def test_lora_leaves_the_base_untouched_and_its_peft_adapter_gives_the_trained_logits(base, tmp_path):
    cfg = settings(base, "lora")
    run(cfg, tmp_path)
    adapter = tmp_path / ft.ADAPTER_FOLDER
    assert {p.name for p in adapter.iterdir()} == {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME}
    peft_config = json.loads((adapter / ADAPTER_CONFIG_NAME).read_text())
    assert (peft_config["peft_type"], peft_config["r"], peft_config["lora_alpha"]) == ("LORA", 2, 16.0)
    assert all(
        key.startswith("base_model.model.model.language_model.")
        for key in load_file(adapter / "adapter_model.safetensors")
    )

    trained = load_model(base)  # the model as training left it: the run's checkpoint
    ft.prepare(trained, cfg)
    load_state(tmp_path / "finetune.safetensors", trained, make_optimizer(trained, cfg.stage))
    base_weights = load_file(base / "model.safetensors")
    assert all(torch.equal(base_weights[name], p) for name, p in trained.state_dict().items() if name in base_weights)
    assert any(layer.lora_B.abs().sum() > 0 for layer in trained.modules() if hasattr(layer, "lora_B"))

    loaded = load_model(base)
    load_adapter(loaded, adapter)
    processor = load_processor(base)
    batch = process(processor, [example(seed, ft.new_task_world(RECIPE.world)) for seed in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(forward(loaded.eval(), batch).logits, forward(trained.eval(), batch).logits)
        assert not torch.allclose(forward(load_model(base), batch).logits, forward(trained, batch).logits)


@pytest.mark.slow
def test_a_resumed_run_ends_like_an_uninterrupted_one_and_a_crash_while_writing_leaves_no_partial_file(
    base, tmp_path, monkeypatch
):
    cfg = settings(base, "full", old_fraction=0.5)
    whole = run(cfg, tmp_path / "whole")

    real = ft.finetune_examples
    monkeypatch.setattr(ft, "finetune_examples", lambda step, *args: 1 / 0 if step == 3 else real(step, *args))
    with pytest.raises(ZeroDivisionError):
        run(cfg, tmp_path / "resumed")  # killed at step 3: the checkpoint of step 2 is kept
    monkeypatch.setattr(ft, "finetune_examples", real)

    def half_then_die(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("pgemma.checkpoint.save_file", half_then_die)
    with pytest.raises(OSError, match="disk full"):
        run(cfg, tmp_path / "resumed")  # steps 2 to 4, then the model's weights fail to write
    model_folder = tmp_path / "resumed" / ft.MODEL_FOLDER
    assert not (model_folder / "model.safetensors").exists()
    monkeypatch.undo()

    resumed = run(cfg, tmp_path / "resumed")
    written = (tmp_path / "whole" / ft.MODEL_FOLDER / "model.safetensors").read_bytes()
    assert (model_folder / "model.safetensors").read_bytes() == written
    assert resumed["curve"] == whole["curve"] and resumed["final"] == whole["final"]
    assert resumed["steps_timed"] == 0 and whole["steps_timed"] == STAGE.steps
    files = {p.name for p in (tmp_path / "resumed").iterdir()} | {p.name for p in model_folder.iterdir()}
    assert not [name for name in files if name.endswith(".tmp")]


@pytest.mark.slow
def test_a_run_folder_refuses_other_settings(base, tmp_path):
    run(settings(base, "lora"), tmp_path)
    with pytest.raises(RunFolderError, match=r"rank: folder 2, requested 4"):
        run(replace(settings(base, "lora"), rank=4), tmp_path)


@pytest.mark.slow
def test_curves_hold_the_base_model_then_each_evaluation(base, tmp_path):
    result = run(settings(base, "frozen-vision"), tmp_path)
    assert json.loads((tmp_path / "curves.json").read_text()) == json.loads(json.dumps(result))
    assert [point["step"] for point in result["curve"]] == [0, 2, 4]
    keys = {f"{world}_{task}_exact" for world in ("new", "old") for task in TASKS} | {
        "new_detect_iou",
        "old_detect_iou",
    }
    assert set(result["final"]) == keys and set(result["curve"][0]) == keys | {"step"}
    assert 0 < result["trainable_parameters"] < result["total_parameters"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "OUT", "--mode", "half"], "invalid choice: 'half'"),
        (["--out", "OUT", "--mode", "lora", "--rank", "0"], "rank must be an integer >= 1 for LoRA, got 0"),
        (["--out", "OUT", "--mode", "full", "--rank", "4"], "--rank is LoRA's rank: it needs --mode lora"),
        (["--out", "OUT", "--old-fraction", "1"], "old_fraction must be in [0, 1)"),
        (["NOWHERE", "--out", "OUT"], "NOWHERE is not a folder"),
        (["EMPTY", "--out", "OUT"], "EMPTY has no recipe.json"),
    ],
)
def test_the_command_line_says_what_is_wrong(argv, message, tmp_path, capsys):
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / arg) if arg in ("NOWHERE", "EMPTY", "OUT") else arg for arg in argv]
    with pytest.raises(SystemExit) as stop:
        train_main(["finetune", *argv])
    assert stop.value.code != 0
    assert message.replace("NOWHERE", str(tmp_path / "NOWHERE")).replace("EMPTY", str(tmp_path / "EMPTY")) in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "OUT").exists()


@pytest.mark.slow
def test_the_command_line_fine_tunes_and_says_where_it_wrote(base, tmp_path, capsys):
    options = ["--steps", "2", "--batch-size", "2", "--curve-scenes", "2", "--eval-scenes", "2", "--eval-every", "0"]
    train_main(["finetune", str(base), "--out", str(tmp_path), "--mode", "lora", "--rank", "2", *options])
    printed = capsys.readouterr().out
    assert "trainable parameters:" in printed and "new_caption_exact" in printed
    assert f"adapter written to {tmp_path / ft.ADAPTER_FOLDER}" in printed
    assert json.loads((tmp_path / "recipe.json").read_text())["rank"] == 2


def test_the_record_holds_every_run_of_the_comparison():
    record = ft.load_record()
    assert record["command"] == ft.COMPARE_COMMAND
    assert [run["name"] for run in record["runs"]] == [name for name, _, _ in ft.COMPARISON]
    for run, (_, _, options) in zip(record["runs"], ft.COMPARISON):
        assert run["settings"]["mode"] == options[1] and run["settings"]["base"] is None
        assert run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == run["settings"]["stage"]["steps"]
        assert set(run["final"]) == set(run["curve"][0]) - {"step"}
        assert 0 < run["trainable_parameters"] <= run["total_parameters"]
        assert run["seconds_per_step"] > 0 and run["memory_peak_mb"] >= run["memory_loaded_mb"] > 0


def test_the_chapter_shows_the_record_as_it_is():
    notebook = nbformat.read(ROOT / "book" / "14_finetuning.ipynb", as_version=4)
    shown = [
        output.get("data", {}).get("text/markdown", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    assert ft.comparison_table(ft.load_record()) in shown
