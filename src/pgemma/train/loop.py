"""The training loop both stages share: learning rate, AdamW, and checkpoints that survive a kill.

Book chapter: "Assembling PaliGemma". Training state (weights, AdamW moments, step, RNG) is one
safetensors file with its settings as JSON metadata, replaced atomically, so a run can be stopped
at any moment and resumed: the resumed run ends with the same weights, to the bit, as one that
was never stopped. Each save keeps the checkpoint before it beside it (``NAME.prev``), and a
checkpoint that cannot be resumed from (truncated, overwritten, written for another model) is
refused with a message naming the file and what to do.
"""

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from pgemma.files import atomic_write
from pgemma.train import distributed
from pgemma.train.recipe import StageConfig

# ----------------------------------------------------------------------------------------------
# Checkpoints


def previous_checkpoint(path: Path) -> Path:
    """Where `save_state` keeps the checkpoint that `path` held before its last save."""
    return path.with_name(path.name + ".prev")


ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")  # what torch's AdamW keeps per parameter
CHECKED_METADATA = ("step", "param_groups", "info")  # with the tensors, under the checksum


class DamagedCheckpointError(ValueError):
    """A checkpoint that training cannot resume from; the message names the file and what to do."""


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of the step, settings and every tensor's name, dtype, shape and bytes.

    safetensors keeps no checksum: without one, bytes overwritten inside the file would load.
    """
    digest = hashlib.sha256(json.dumps({k: metadata[k] for k in CHECKED_METADATA}, sort_keys=True).encode())
    for key in sorted(tensors):
        value = tensors[key]
        digest.update(f"{key} {value.dtype} {tuple(value.shape)}".encode())
        digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int, info: dict) -> None:
    """Weights, AdamW moments, step and RNG in one safetensors file (no pickle), `info` as JSON.

    The checkpoint `path` held until now is kept as `previous_checkpoint(path)`.
    """
    # clone: tied weights share storage, which safetensors refuses to write
    tensors = {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).clone()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"step": str(step), "param_groups": json.dumps(opt_state["param_groups"]), "info": json.dumps(info)}
    metadata["sha256"] = _digest(tensors, metadata)
    data = save(tensors, metadata)  # in memory: save_file would leave temporary files of its own if killed
    with atomic_write(path) as temporary:
        temporary.write_bytes(data)
        if path.exists():  # the new checkpoint is whole: keep the one it replaces
            with atomic_write(previous_checkpoint(path)) as copy:
                shutil.copyfile(path, copy)


def _listed(keys: list[str], most: int = 4) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _check_state(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], module: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Raise ValueError naming the first way the file differs from what `save_state` writes for these."""
    missing = [key for key in CHECKED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"its metadata lacks {_listed(missing)}: it is not a training checkpoint")
    expected = {f"model.{k}": v for k, v in module.state_dict().items()}
    expected["rng.torch"] = torch.get_rng_state()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # optim.{index} order
    groups = json.loads(metadata["param_groups"])
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("its optimizer state is for another set of parameters")
    for index in sorted({int(key.split(".")[1]) for key in tensors if key.startswith("optim.")}):
        if not 0 <= index < len(params):
            raise ValueError(f"it has optimizer state for parameter {index}, the model has {len(params)}")
        for name in ADAMW_STATE:
            like = torch.zeros(()) if name == "step" else params[index]  # step: a float32 scalar
            expected[f"optim.{index}.{name}"] = like
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"tensors are missing: {_listed(missing)}")
    if unexpected:
        raise ValueError(f"it has tensors this model does not: {_listed(unexpected)}")
    for key, value in tensors.items():
        if (value.dtype, value.shape) != (expected[key].dtype, expected[key].shape):
            raise ValueError(
                f"{key} is {value.dtype} {tuple(value.shape)}, "
                f"this model needs {expected[key].dtype} {tuple(expected[key].shape)}"
            )
    if "sha256" in metadata and _digest(tensors, metadata) != metadata["sha256"]:
        raise ValueError("its bytes changed after it was written (the checksum in its metadata differs)")


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}


def _damaged(path: Path, reason: str) -> DamagedCheckpointError:
    """The error for a checkpoint that cannot be resumed from, with the ways to go on."""
    fixes = f"delete {path} to train this stage again from its first step"
    previous = previous_checkpoint(path)
    if previous.exists():
        try:
            with safe_open(str(previous), framework="pt") as file:
                step = (file.metadata() or {})["step"]
            fixes += (
                f", or put back the checkpoint saved before it (step {step}) by renaming {previous.name} to {path.name}"
            )
        except (SafetensorError, KeyError):
            fixes += f" ({previous.name}, the checkpoint saved before it, is damaged too)"
    return DamagedCheckpointError(f"cannot resume from {path}: {reason}. To go on, {fixes}")


def load_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what `save_state` wrote into `module` and `optimizer`; returns (step, info).

    Raises DamagedCheckpointError, before changing anything, if the file is not such a checkpoint
    or not one for this model (truncated, overwritten, written for another recipe).
    """
    try:
        tensors, metadata = _read_state(path)
        _check_state(tensors, metadata, module, optimizer)
        step, info = int(metadata["step"]), json.loads(metadata["info"])
    except SafetensorError as error:
        raise _damaged(path, f"it is not a valid safetensors file ({error})") from error
    except (ValueError, LookupError, TypeError) as error:  # json's too, and settings of the wrong structure
        raise _damaged(path, str(error)) from error
    module.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return step, info


# ----------------------------------------------------------------------------------------------
# The loop


def lr_at(step: int, cfg: StageConfig, warmup: int | None = None) -> float:
    """Linear warmup (over `warmup` steps, default `cfg.warmup`), then constant, or cosine to 0."""
    warmup = cfg.warmup if warmup is None else warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, cfg: StageConfig, slow: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW, with no weight decay on 1-d parameters (norms, biases, scalars).

    The parameters of `slow` (stage 1: the pretrained vision tower) warm up over
    `cfg.slow_warmup` steps, so the first gradients of a random decoder do not wreck them.
    """
    slow_ids = {id(p) for p in slow.parameters()} if slow is not None else set()
    groups = []
    for warmup, is_slow in ((cfg.warmup, False), (max(cfg.warmup, cfg.slow_warmup), True)):
        params = [p for p in module.parameters() if p.requires_grad and (id(p) in slow_ids) == is_slow]
        groups += [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "warmup": warmup},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "warmup": warmup},
        ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def train_loop(
    name: str,
    module: nn.Module,
    loss_fn: Callable[[int], torch.Tensor],
    cfg: StageConfig,
    checkpoint: Path,
    on_eval: Callable[[], dict] | None = None,
    slow: nn.Module | None = None,
) -> list[dict]:
    """Run `cfg.steps` AdamW steps on `loss_fn(step)`, resuming from `checkpoint` if it exists.

    `loss_fn` draws its batch from the step number alone, so a resumed run sees the same data.
    Returns the evaluation curve: a list of {"step": ..., **on_eval()} (kept in the checkpoint).
    On several ranks (`pgemma.train.distributed`), `loss_fn` computes this rank's share, the
    gradients are averaged over the ranks, and only rank 0 evaluates and saves.
    """
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(module, cfg, slow)
    step, curve = 0, []
    if checkpoint.exists():
        step, info = load_state(checkpoint, module, optimizer)
        curve = info["curve"]
    module.train()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc=name, disable=not distributed.is_main())
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, group["warmup"])
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(module)
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{distributed.mean_over_ranks(loss.detach()).item():.3f}")
        done = step + 1
        if on_eval and cfg.eval_every and done % cfg.eval_every == 0:
            module.eval()
            curve.append({"step": done, **distributed.on_main(on_eval)})
            module.train()
            if distributed.is_main():
                bar.write(
                    f"{name} step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in curve[-1].items() if k != "step")
                )
        if distributed.is_main() and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_state(checkpoint, module, optimizer, done, {"curve": curve})
    return curve
