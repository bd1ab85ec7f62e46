"""What makes two finetune runs the same run: RUN_KEYS' settings and the hash of every data file read. A
resumed run must share it with the interrupted one to continue it exactly; checkpoints of another run are never
resumed or pruned, and a --per_language language trained by another run is trained again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import languages
from ..errors import ConfigError
from ..manifest import fingerprint_inputs
from .checkpoints import list_checkpoints, read_trainer_state
from .config import FinetuneConfig

RUN_KEYS = ("base_model", "lang", "global_batch_size", "learning_rate", "cutoff_len", "val_set_size", "lora_r",
            "lora_alpha", "lora_target_modules", "train_on_inputs", "seed", "packing", "lang_temperature",
            "warmup_steps", "prompt_template_name", "max_steps", "num_epochs", "method", "beta", "init_adapter")


def run_identity(config: FinetuneConfig) -> dict[str, Any]:
    """What makes two runs the same run: the settings of RUN_KEYS and the hash of every data file it reads."""
    settings = {key: getattr(config, key) for key in RUN_KEYS}
    settings["lang"] = languages.parse_langs(config.lang)
    langs = settings["lang"]
    data = fingerprint_inputs(config.data_path, include=lambda file: _read_for(file, langs))
    return {"settings": json.loads(json.dumps(settings)), "data": data}


def _read_for(file: Path, langs: list[str]) -> bool:
    """Whether a data file matters to a run on `langs` (a file named after another language does not): only
    those are hashed, so each language of a --per_language run hashes its own files."""
    return not (langs and languages.is_known(file.stem) and languages.get(file.stem).code not in langs)


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two run identities, in words ([] when they are the same run)."""
    old, new = saved.get("settings", {}), current["settings"]
    changes = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key)]
    before = {entry.get("path", entry.get("hub_id")): entry.get("sha256") for entry in saved.get("data", [])}
    after = {entry.get("path", entry.get("hub_id")): entry.get("sha256") for entry in current["data"]}
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            changes.append(f"data file {path} is no longer read")
        elif path not in before:
            changes.append(f"data file {path} is new")
        elif before[path] != after[path]:
            changes.append(f"data file {path} changed")
    return changes


def check_output_dir(output_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse an output folder holding checkpoints of another run: this run would resume or prune them."""
    for folder in list_checkpoints(output_dir):
        saved = saved_identity(folder)
        differences = identity_differences(saved, identity) if saved else []
        if differences:
            raise ConfigError(f"{folder} belongs to another run ({'; '.join(differences)}). Use another "
                              "--output_dir, or remove its checkpoints to start this run there.")


def saved_identity(folder: Path) -> dict[str, Any] | None:
    """The run identity a checkpoint recorded (None for one without a trainer state, or from before identities)."""
    state = read_trainer_state(folder)
    return state.get("run") if state else None
