"""Tests for pgemma.train.search: every variant trained and probed, a resumable search, the
command line, and the stored record being this command's output for the shipped recipe."""

import json
import shutil
from dataclasses import asdict, replace

import pytest
import torch

from pgemma.shipped import shipped_model_folder
from pgemma.train.__main__ import main
from pgemma.train.folder import STAGE_FILES
from pgemma.train.recipe import Recipe
from pgemma.train.search import RECORD_NAME, VARIANTS, ProbeConfig, probe_tower, search, search_table
from pgemma.viz.paligemma import plot_training_curves

TINY = Recipe.tiny()
BASE = replace(
    TINY,
    stage0=replace(TINY.stage0, steps=4, batch_size=4, warmup=1, checkpoint_every=2, eval_every=4),
    stage1=replace(TINY.stage1, steps=4, batch_size=4, warmup=1, checkpoint_every=2, eval_every=4),
)
PROBE = ProbeConfig(steps=3, batch_size=4, scenes=6)


def as_json(value):
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A search on a few steps of the tiny recipe: (its folder, its record)."""
    folder = tmp_path_factory.mktemp("search")
    return folder, search(folder / "runs", folder / "record.json", BASE, eval_scenes=4, probe=PROBE, curve_scenes=4)


@pytest.mark.slow
def test_search_trains_and_probes_every_variant_and_resumes(searched):
    folder, result = searched
    record = folder / "record.json"
    assert json.loads(record.read_text()) == as_json(result)
    assert [entry["name"] for entry in result["runs"]] == [variant.name for variant in VARIANTS]
    for variant, entry in zip(VARIANTS, result["runs"]):
        recipe = variant.change(BASE)
        assert entry["recipe"] == as_json(asdict(recipe))
        assert [point["step"] for point in entry["stage1"]] == [4]
        assert ("stage0" in entry) == (recipe.stage0.steps > 0)
        assert set(entry["final"]) == {"caption_exact", "colour_exact", "count_exact", "detect_exact", "detect_iou"}
        assert 0 <= entry["probe"]["patch_kind"] <= 1 and entry["probe"]["box_error_px"] > 0
    assert [v.change(BASE) == BASE for v in VARIANTS] == [True, False, False, False]  # one change each
    checkpoint = folder / "runs" / VARIANTS[0].folder / STAGE_FILES[1]
    saved = checkpoint.read_bytes()
    again = search(folder / "runs", record, BASE, eval_scenes=4, probe=PROBE, curve_scenes=4)
    assert again == result and checkpoint.read_bytes() == saved  # finished runs are not trained again
    assert search_table(result).count("\n") == len(VARIANTS) + 1


@pytest.mark.slow
def test_the_probe_reads_the_tower_stage_1_started_from(searched, tmp_path):
    trained = tmp_path / "run"
    shutil.copytree(searched[0] / "runs" / VARIANTS[0].folder, trained)
    untrained = replace(ProbeConfig(), steps=0, scenes=6)
    longer = replace(PROBE, steps=30)
    # the stage-0 tower, not a random one: a probe without training steps still differs between them
    assert probe_tower(BASE, trained, untrained) != probe_tower(VARIANTS[1].change(BASE), trained, untrained)
    assert probe_tower(BASE, trained, longer)["patch_kind"] > probe_tower(BASE, trained, untrained)["patch_kind"]
    (trained / STAGE_FILES[0]).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=STAGE_FILES[0]):
        probe_tower(BASE, trained, PROBE)


@pytest.mark.slow
def test_runs_trained_two_at_a_time_give_the_same_record(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that each of the two processes gets 1 thread, like this one below
    try:
        together = search(tmp_path / "two", tmp_path / "two.json", BASE, 4, PROBE, curve_scenes=4, jobs=2)
        torch.set_num_threads(1)
        alone = search(tmp_path / "one", tmp_path / "one.json", BASE, 4, PROBE, curve_scenes=4)
    finally:
        torch.set_num_threads(threads)
    assert together == alone


def test_the_command_line_refuses_a_folder_of_other_files_and_torchrun(tmp_path, capsys, monkeypatch):
    (tmp_path / VARIANTS[0].folder).mkdir()
    (tmp_path / VARIANTS[0].folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--out", str(tmp_path), "--base", "tiny"])
    assert exit_info.value.code == 1 and "notes.txt" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["search", "--out", str(tmp_path / "other")])
    assert "torchrun" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit):
        main(["search", "--out", str(tmp_path / "other"), "--jobs", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_the_stored_record_is_the_search_of_the_shipped_recipe():
    record = json.loads((shipped_model_folder().parent / RECORD_NAME).read_text())
    shipped = Recipe.shipped()
    assert [entry["name"] for entry in record["runs"]] == [variant.name for variant in VARIANTS]
    for variant, entry in zip(VARIANTS, record["runs"]):
        assert entry["description"] == variant.description
        assert entry["recipe"] == as_json(asdict(variant.change(shipped)))
        assert entry["stage1"][-1]["step"] == shipped.stage1.steps
    assert record["probe"] == asdict(ProbeConfig()) and record["eval_scenes"] == 300
    figure = plot_training_curves(record, "stage1", {"caption_exact": "caption"}, highlight="shipped")
    assert len(figure.axes[0].lines) == len(VARIANTS)
