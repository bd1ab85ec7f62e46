"""Checkpoint folders on disk: OUTPUT_DIR/checkpoint-STEP holds the adapter, `optimizer.pt` (optimizer and
scheduler), `trainer_state.json` (step, log, config, run identity) and one `rng_state_RANK.pt` per process.

A checkpoint is written into a staging folder renamed into place once complete, so a folder named
checkpoint-STEP is always whole; they are listed oldest first, chosen for resume, read back on the CPU (a file
cut short is a ModelError naming it) and pruned to --save_total_limit."""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..adapters import ADAPTER_WEIGHTS, load_adapter_tensors
from ..errors import ConfigError, ModelError
from ..fileio import atomic_write_bytes, atomic_write_json, disk_full_named, fsync_dir, fsync_tree

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_STAGING = ".adapter.partial"  # where the finished adapter is written before its files move into place


def checkpoint_paths(output_dir: Path, step: int) -> tuple[Path, Path]:
    """The checkpoint folder of `step` and the staging folder it is written in."""
    return output_dir / f"checkpoint-{step}", output_dir / f".checkpoint-{step}.partial"


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_{rank}.pt"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders of `output_dir`, oldest (lowest step) first."""
    if not output_dir.is_dir():
        return []
    found = [path for path in output_dir.glob("checkpoint-*") if path.is_dir() and path.name[11:].isdigit()]
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]))


def checkpoints_to_resume(output_dir: Path, spec: str) -> list[Path]:
    """`auto`: this folder's checkpoints, newest first; else the one folder named."""
    if spec == "auto":
        return list_checkpoints(output_dir)[::-1]
    folder = Path(spec)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"--resume_from_checkpoint {spec}: no {ADAPTER_WEIGHTS} there.")
    return [folder]


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Remove all but the `keep` newest checkpoints."""
    checkpoints = list_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partials(output_dir: Path) -> None:
    """Staging folders a killed run left behind (a checkpoint or the adapter being written)."""
    for leftover in [*output_dir.glob(".checkpoint-*.partial"), output_dir / ADAPTER_STAGING]:
        if leftover.is_dir():
            log.info("Removing %s, left by an interrupted run.", leftover)
            shutil.rmtree(leftover)


def publish_checkpoint(staging: Path, final: Path, model: Any, optimizer_states: dict[str, Any],
                       state: dict[str, Any]) -> None:
    """The main process's files (adapter, optimizer and scheduler, trainer state) into `staging`, beside the
    ranks' RNG files, then the whole folder flushed and renamed to `final`."""
    with disk_full_named(staging):  # torch and safetensors raise their own errors on a full disk
        model.save_pretrained(staging, selected_adapters=["default"])
    save_torch(optimizer_states, staging / OPTIMIZER_FILE)
    atomic_write_json(staging / STATE_FILE, state)
    fsync_tree(staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    fsync_dir(final.parent)


def save_rng_state(folder: Path, rank: int) -> None:
    """This process's RNG states (CPU, and CUDA where there is one) into `folder`."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    save_torch(state, _rng_file(folder, rank))


def restore_rng_state(folder: Path, rank: int) -> None:
    """This process's RNG states as `folder` saved them (a checkpoint from another number of processes may have
    none for this rank: they are left as they are)."""
    path = _rng_file(folder, rank)
    if not path.is_file():
        return
    state = _read_checkpoint_file(path, _load_on_cpu)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def read_trainer_state(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer state (step, log, config, run), or None for a folder of adapter weights only."""
    path = folder / STATE_FILE
    return _read_checkpoint_file(path, lambda file: json.loads(file.read_text())) if path.is_file() else None


def read_optimizer_states(folder: Path) -> dict[str, Any]:
    """The optimizer's and the scheduler's state dicts, on the CPU."""
    return _read_checkpoint_file(folder / OPTIMIZER_FILE, _load_on_cpu)


def save_torch(value: Any, path: Path) -> None:
    """torch.save through the atomic writer (a full disk is a DiskFull naming the file)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_on_cpu(path: Path) -> Any:
    return torch.load(path, weights_only=True, map_location="cpu")


def _read_checkpoint_file(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, or a ModelError naming the file when it is cut short or unreadable."""
    try:
        return read(path)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: unreadable ({type(exc).__name__}: {exc}); the checkpoint is damaged.") from None


def load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_adapter_tensors(folder / ADAPTER_WEIGHTS))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ModelError(f"{folder}: adapter does not fit this model (unexpected keys: {unexpected[:3]}).")
