"""Tests for pgemma.train.folder: one trainer per run folder, on one recipe, and no stale temporary files."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from pgemma.shipped import shipped_model_folder
from pgemma.train import pipeline
from pgemma.train.folder import RunFolderError, lock_folder, open_run_folder, recipe_differences
from pgemma.train.recipe import Recipe

RECIPE = Recipe.tiny()
ME = f"process {os.getpid()} on host {socket.gethostname()}"


def as_json(recipe):
    return json.loads(json.dumps(asdict(recipe)))


def run_folder(tmp_path, recipe_json, **files):
    """A folder holding recipe.json (text as given, or a recipe) and `files` (name: bytes), dated in the past."""
    folder = tmp_path / "run"
    folder.mkdir()
    if recipe_json is not None:
        text = recipe_json if isinstance(recipe_json, (str, bytes)) else json.dumps(recipe_json, indent=2)
        files["recipe.json"] = text.encode() if isinstance(text, str) else text
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # so that a rewrite would show in the mtime
    return folder


def snapshot(folder):
    """Every file's bytes and every entry's mtime, the folder's own included."""
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
        for path in [folder, *folder.rglob("*")]
    }


def hold_lock(folder, ready):
    with lock_folder(folder):
        ready.set()
        time.sleep(600)


# ----------------------------------------------------------------------------------------------
# One trainer at a time


def test_a_second_trainer_on_the_folder_stops_at_once_naming_the_holder(tmp_path):
    with lock_folder(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == ME
        with pytest.raises(RunFolderError) as error:
            with open_run_folder(tmp_path, RECIPE):
                pass
    assert str(tmp_path) in str(error.value) and ME in str(error.value)
    with open_run_folder(tmp_path, RECIPE):  # released at the end of the `with`
        pass


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    context = multiprocessing.get_context("fork")  # the child needs no import: the test stays quick
    ready = context.Event()
    holder = context.Process(target=hold_lock, args=(tmp_path, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunFolderError, match=f"process {holder.pid} on host"):
            with open_run_folder(tmp_path, RECIPE):
                pass
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean anything up
        holder.join()
    assert f"process {holder.pid}" in (tmp_path / ".lock").read_text()  # a dead process's lock file...
    with open_run_folder(tmp_path, RECIPE):  # ... does not block the next run
        assert (tmp_path / ".lock").read_text().strip() == ME


def test_the_command_line_refuses_a_folder_in_use(tmp_path):
    with lock_folder(tmp_path):
        result = subprocess.run(
            [sys.executable, "-m", "pgemma.train", "--recipe", "tiny", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(tmp_path) in result.stderr and ME in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_the_run_holds_the_lock_while_it_trains(tmp_path, monkeypatch):
    def try_to_open_the_folder_again(*args):
        with pytest.raises(RunFolderError, match="in use"):
            with open_run_folder(tmp_path, RECIPE):
                pass
        raise KeyboardInterrupt  # enough: stop the run here

    monkeypatch.setattr(pipeline, "pretrain_vision", try_to_open_the_folder_again)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(RECIPE, tmp_path)
    with open_run_folder(tmp_path, RECIPE):  # and lets it go when the run stops
        pass


# ----------------------------------------------------------------------------------------------
# One recipe per folder


def test_a_run_of_another_recipe_is_refused_untouched_naming_each_difference(tmp_path):
    folder = run_folder(tmp_path, as_json(RECIPE), **{"stage0.safetensors": b"state", "curves.json": b"{}"})
    before = snapshot(folder)
    other = replace(
        RECIPE, world=replace(RECIPE.world, colours=("red", "blue")), stage1=replace(RECIPE.stage1, lr=2e-3)
    )
    with pytest.raises(RunFolderError) as error:
        pipeline.run(other, folder)
    message = str(error.value)
    assert str(folder) in message and "another recipe" in message
    assert 'world.colours: folder ["red", "green", "blue", "yellow"], requested ["red", "blue"]' in message
    assert "stage1.lr: folder 0.001, requested 0.002" in message
    assert message.count(": folder ") == 2, "only what differs"
    assert snapshot(folder) == before


def test_fields_only_one_of_the_recipes_has_are_differences_too():
    old = as_json(RECIPE)
    old["stage0"]["one_shape_steps"] = 0
    del old["smooth_loc_init"]
    assert recipe_differences(old, as_json(RECIPE)) == [
        "stage0.one_shape_steps: folder 0, requested (no such field)",
        "smooth_loc_init: folder (no such field), requested true",
    ]


def test_the_shipped_recipe_json_is_recipe_shipped_but_for_a_retired_field():
    # The shipped model was trained when StageConfig still had one_shape_steps (0: unused), so
    # resuming its run with Recipe.shipped() would be refused; readers of its world are unaffected.
    shipped = json.loads((shipped_model_folder() / "recipe.json").read_text())
    assert recipe_differences(shipped, as_json(Recipe.shipped())) == [
        "stage0.one_shape_steps: folder 0, requested (no such field)",
        "stage1.one_shape_steps: folder 0, requested (no such field)",
    ]


# ----------------------------------------------------------------------------------------------
# What a folder holds

NOT_RUNS = {
    "unrelated files": (None, {"notes.txt": b"mine", "data/a.png": b"\x89PNG"}),
    "a checkpoint but no recipe": (None, {"stage1.safetensors": b"state"}),
    "recipe.json not JSON": ('{"world": {', {"stage0.safetensors": b"state"}),
    "recipe.json not UTF-8": (b"\xff\xfe\x00", {}),
    "recipe.json not an object": ("[1, 2, 3]", {}),
}


@pytest.mark.parametrize(("recipe_json", "files"), NOT_RUNS.values(), ids=NOT_RUNS.keys())
def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, recipe_json, files):
    folder = run_folder(tmp_path, recipe_json, **files)
    before = snapshot(folder)
    with pytest.raises(RunFolderError, match="not a (training run|recipe)") as error:
        pipeline.run(RECIPE, folder)
    assert str(folder) in str(error.value)
    assert snapshot(folder) == before


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "run").write_text("mine")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        pipeline.run(RECIPE, tmp_path / "run")
    assert (tmp_path / "run").read_text() == "mine"


STARTS = {
    "new folder": None,
    "empty folder": {},
    "a run killed before its recipe was written": {
        ".lock": b"process 999999 on host gone\n",
        "recipe.json.x1y2z3_4.tmp": b'{"wo',
    },
}


@pytest.mark.parametrize("files", STARTS.values(), ids=STARTS.keys())
def test_a_new_or_empty_folder_starts_a_run(tmp_path, files):
    folder = tmp_path / "run"
    if files is not None:
        folder = run_folder(tmp_path, None, **files)
    with open_run_folder(folder, RECIPE):
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "recipe.json"]
        assert json.loads((folder / "recipe.json").read_text()) == as_json(RECIPE)


def test_resuming_keeps_the_recipe_file_as_it_was(tmp_path):
    folder = run_folder(tmp_path, as_json(RECIPE), **{"stage0.safetensors": b"state"})
    before = snapshot(folder)
    with open_run_folder(folder, RECIPE):
        pass
    after = snapshot(folder)
    assert after["recipe.json"] == before["recipe.json"] and after["stage0.safetensors"] == before["stage0.safetensors"]


# ----------------------------------------------------------------------------------------------
# Temporary files and permissions

STALE = ["stage1.safetensors.a1b2_c3d.tmp", "stage0.safetensors.prev.zzzzzzzz.tmp", "recipe.json.abcdefgh.tmp"]
NOT_OURS = [
    "notes.abcdefgh.tmp",  # not a file the trainer writes
    "stage1.safetensors.abc.tmp",  # not mkstemp's 8 characters
    "stage1.safetensors.ABCDEFGH.tmp",  # nor its alphabet
    "stage1.safetensors.abcdefgh.tmp.keep",
    "curves.json.abcdefgh.tmp/",  # a folder
]


def test_stale_temporary_files_are_removed_once_the_lock_is_held(tmp_path):
    files = {name.rstrip("/") + ("/inside" if name.endswith("/") else ""): b"x" for name in STALE + NOT_OURS}
    folder = run_folder(tmp_path, as_json(RECIPE), **files)
    with lock_folder(folder):  # a trainer at work: its temporary files are not stale
        with pytest.raises(RunFolderError, match="in use"):
            with open_run_folder(folder, RECIPE):
                pass
        assert all((folder / name).exists() for name in STALE)
    with open_run_folder(folder, RECIPE):
        pass
    left = {p.name for p in folder.iterdir()}
    assert not left & set(STALE) and {name.rstrip("/") for name in NOT_OURS} <= left


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_recipe_and_lock_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open_run_folder(tmp_path, RECIPE):
            pass
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        ".lock": 0o666 & ~umask,
        "recipe.json": 0o666 & ~umask,
    }
