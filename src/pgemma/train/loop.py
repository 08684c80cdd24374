"""The training loop both stages share: learning rate, AdamW, and checkpoints that survive a kill.

Book chapter: "Assembling PaliGemma". Training state (weights, AdamW moments, step, RNG) is one
safetensors file with its settings as JSON metadata, replaced atomically, so a run can be stopped
at any moment and resumed: the resumed run ends with the same weights, to the bit, as one that
was never stopped.
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from pgemma.train.recipe import StageConfig

# ----------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file so that `path` always holds a whole file, the old one or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int, info: dict) -> None:
    """Weights, AdamW moments, step and RNG in one safetensors file (no pickle), `info` as JSON."""
    # clone: tied weights share storage, which safetensors refuses to write
    tensors = {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).clone()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"step": str(step), "param_groups": json.dumps(opt_state["param_groups"]), "info": json.dumps(info)}
    _atomic_save(tensors, metadata, path)


def load_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what `save_state` wrote into `module` and `optimizer`; returns (step, info)."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    module.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), json.loads(metadata["info"])


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
    """
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(module, cfg, slow)
    step, curve = 0, []
    if checkpoint.exists():
        step, info = load_state(checkpoint, module, optimizer)
        curve = info["curve"]
    module.train()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc=name)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, group["warmup"])
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if on_eval and cfg.eval_every and done % cfg.eval_every == 0:
            module.eval()
            curve.append({"step": done, **on_eval()})
            module.train()
            bar.write(f"{name} step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in curve[-1].items() if k != "step"))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_state(checkpoint, module, optimizer, done, {"curve": curve})
    return curve
