"""The run folder: one trainer at a time, on the recipe it was started with.

Book chapter: "Assembling PaliGemma". ``python -m pgemma.train --out DIR`` keeps a whole run in
DIR: recipe.json, the stages' checkpoints (each with the one saved before it, ``.prev``),
curves.json and model/. `open_run_folder` is the way in:

- it locks the folder for the whole run (``flock`` on DIR/.lock, which names the process and
  host holding it), so that a second trainer on the same folder stops at once instead of both
  writing the same checkpoints. The kernel releases the lock when its process ends, however it
  ends: the lock of a killed run does not block the next one;
- it decides what the folder holds. A new or empty folder starts a run. A folder with
  recipe.json is a run: it resumes if the recipe is the same, field by field. Anything else is
  refused and left as it was: another recipe (the message names each field that differs, with
  both values), a recipe.json that is not a JSON object, or, without recipe.json, any file but
  those a run leaves before it writes its recipe (the lock, temporary files);
- it removes the temporary files of saves a kill interrupted (`pgemma.files.atomic_write` names
  them ``NAME.XXXXXXXX.tmp``), once it holds the lock: a running trainer's are never touched.

The lock needs ``fcntl``: Linux and macOS.
"""

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from pgemma.files import TEMPORARY_FILE, atomic_write
from pgemma.train.recipe import Recipe

LOCK_FILE = ".lock"
RECIPE_FILE = "recipe.json"
CURVES_FILE = "curves.json"
STAGE_FILES = ("stage0.safetensors", "stage1.safetensors")  # the stages' checkpoints
FINETUNE_FILE = "finetune.safetensors"  # the checkpoint of `pgemma.train.finetune`
CHECKPOINTS = (*STAGE_FILES, FINETUNE_FILE)
WRITTEN = {RECIPE_FILE, CURVES_FILE, *CHECKPOINTS, *(name + ".prev" for name in CHECKPOINTS)}


class RunFolderError(RuntimeError):
    """A folder a run cannot use: in use, holding another recipe, or not a run folder."""


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary file `atomic_write` made for a file of a run."""
    match = TEMPORARY_FILE.fullmatch(name)
    return match is not None and match["name"] in WRITTEN


def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'field.path: folder OLD, requested NEW' for each field that differs, nested settings included."""
    differences = []
    for key in [*old, *(key for key in new if key not in old)]:
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            differences += recipe_differences(before, after, f"{prefix}{key}.")
        elif key not in old or key not in new or before != after:
            differences.append(f"{prefix}{key}: folder {_shown(old, key)}, requested {_shown(new, key)}")
    return differences


def _shown(settings: dict, key: str) -> str:
    return json.dumps(settings[key]) if key in settings else "(no such field)"


def check_run_folder(folder: Path, recipe: Recipe) -> None:
    """Raise RunFolderError unless `folder` is new, empty, or a run of `recipe`; changes nothing."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a folder: choose a folder for the run")
    recipe_file = folder / RECIPE_FILE
    if not recipe_file.exists():
        others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name))
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise RunFolderError(
                f"{folder} is not a training run (it has no {RECIPE_FILE}) and is not empty: it holds {shown}. "
                "Choose a new or empty folder for the run"
            )
        return
    try:
        saved = json.loads(recipe_file.read_text())
    except (OSError, ValueError) as error:
        saved, reason = None, str(error)
    else:
        reason = f"it holds a JSON {type(saved).__name__}, not an object"
    if not isinstance(saved, dict):
        raise RunFolderError(
            f"{recipe_file} is not a recipe ({reason}), so {folder} is not a run to resume. "
            f"Choose another folder, or, if it is a run whose {RECIPE_FILE} was damaged, put that file back"
        )
    differences = recipe_differences(saved, json.loads(json.dumps(asdict(recipe))))  # tuples -> lists
    if differences:
        raise RunFolderError(
            f"{folder} is a run of another recipe; resuming it with this one would mix the two:\n  "
            + "\n  ".join(differences)
            + f"\nTrain with the recipe in {recipe_file}, or choose another folder for this one"
        )


@contextmanager
def lock_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if missing) for the `with` block.

    Raises RunFolderError at once, naming the holder, if another process (or another `with` in
    this one) holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "one that has not written its name yet"
            raise RunFolderError(
                f"{folder} is in use by another trainer: {holder} holds {folder / LOCK_FILE}. "
                "Wait for it to end or stop it, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on host {socket.gethostname()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the name of a process that has ended would mislead a reader
    finally:
        os.close(fd)  # and with it, the lock


def remove_temporary_files(folder: Path) -> None:
    """Delete what interrupted saves left in `folder` (hold its lock first)."""
    for path in folder.iterdir():
        if is_temporary(path.name) and not path.is_dir():
            path.unlink()


@contextmanager
def open_run_folder(folder: Path, recipe: Recipe) -> Iterator[None]:
    """Lock `folder` for a run of `recipe`, check it holds nothing else, tidy it, write its recipe.json.

    Raises RunFolderError, leaving the folder as it was, if it cannot be used (module docstring).
    """
    check_run_folder(folder, recipe)  # before the lock, which would create .lock in a refused folder
    with lock_folder(folder):
        check_run_folder(folder, recipe)  # again: another trainer may have begun a run in between
        remove_temporary_files(folder)
        if not (folder / RECIPE_FILE).exists():
            with atomic_write(folder / RECIPE_FILE) as temporary:
                temporary.write_text(json.dumps(asdict(recipe), indent=2))
        yield
