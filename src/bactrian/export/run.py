"""`bactrian export`: check everything first, write into a staging folder, move it into place at the end, so a
failure leaves no partial output behind."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..adapters import ADAPTER_WEIGHTS, split_spec
from ..errors import ConfigError
from ..fileio import disk_full_named, file_sha256, holds_output, remove_leftovers, replace_folder, staging_folder
from ..manifest import read_manifest, write_manifest
from ..models import resolve
from .config import ExportConfig
from .weights import BaseWeights, LoraWeights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@holds_output("output_dir", "export")
def export(config: ExportConfig) -> Path:
    out = _check_output(config)
    if config.format in ("state_dict", "gguf_adapter") and not config.lora_weights:
        raise ConfigError(f"--format {config.format} needs --lora_weights.")
    source = resolve(config.base_model)
    base = BaseWeights(_local_folder(source.path))
    folder = adapter_folder(config)
    adapter = _load_adapter(folder, base) if folder else None
    _refuse_overlap(out, config, source.path)
    remove_leftovers(out)
    staging = staging_folder(out)
    try:
        with disk_full_named(out):
            _write(config, base, adapter, staging, source.identity.get("gguf_file"))
        write_manifest(staging, "export", config, base_model={"spec": config.base_model, **source.identity},
                       adapter=_adapter_identity(adapter))
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_output(config: ExportConfig) -> Path:
    if not config.output_dir:
        raise ConfigError("--output_dir is required.")
    out = Path(config.output_dir).resolve()
    if Path.cwd().is_relative_to(out):
        raise ConfigError(f"--output_dir {config.output_dir} is (or contains) the working directory; name a new "
                          "folder for the export.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.overwrite:
        raise ConfigError(f"--output_dir {out} is not empty; pass --overwrite to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _refuse_overlap(out: Path, config: ExportConfig, base_path: str) -> None:
    """An output folder that is, holds or sits inside an input would destroy that input when replaced."""
    adapters = [str(split_spec(spec)[1]) for spec in config.lora_weights]
    inputs = [Path(path).resolve() for path in (*adapters, config.base_model, base_path)
              if path and Path(path).exists()]
    for path in inputs:
        if out.is_relative_to(path) or path.is_relative_to(out):
            raise ConfigError(f"--output_dir {config.output_dir} overlaps the input {path}; export into a folder "
                              "of its own.")


def _local_folder(path: str) -> Path:
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"]))


def adapter_folder(config: ExportConfig) -> Path | None:
    """The one adapter --lora_weights names (a merge takes one), or None."""
    if len(config.lora_weights) > 1:
        raise ConfigError(f"--lora_weights: an export merges one adapter; {len(config.lora_weights)} were given "
                          f"({', '.join(config.lora_weights)}). Export each into a folder of its own.")
    return split_spec(config.lora_weights[0])[1] if config.lora_weights else None


def _load_adapter(folder: Path, base: BaseWeights) -> LoraWeights:
    adapter = LoraWeights(folder)
    adapter.check_fits(base)
    adapter.check_finite()
    adapter.check_changes_something()
    trained = (read_manifest(adapter.folder) or {}).get("config", {})
    if trained.get("load_8bit") or trained.get("load_4bit"):
        bits = 8 if trained.get("load_8bit") else 4
        log.warning("The adapter was trained on a %d-bit base; the merge adds it to the full-precision base weights "
                    "(the usual QLoRA export), so the merged model differs slightly from the %d-bit base + adapter "
                    "it was trained as.", bits, bits)
    return adapter


def _adapter_identity(adapter: LoraWeights | None) -> dict[str, str] | None:
    if adapter is None:
        return None
    return {"path": str(adapter.folder), "sha256": file_sha256(adapter.folder / ADAPTER_WEIGHTS)}


def _write(config: ExportConfig, base: BaseWeights, adapter: LoraWeights | None, staging: Path,
           source_gguf: str | None) -> None:
    dtype = DTYPES[config.dtype]
    name = Path(config.output_dir).name
    tokenizer_folder = adapter.folder if adapter and (adapter.folder / "tokenizer.json").is_file() else base.folder
    if config.format == "hf":
        from .hf import write_hf

        write_hf(base, adapter, staging, dtype, config.max_shard_size_mb * 1_000_000)
    elif config.format == "state_dict":
        from .hf import copy_tokenizer
        from .state_dict import write_state_dict

        write_state_dict(base, adapter, staging, dtype)
        copy_tokenizer(tokenizer_folder, base.folder, staging)
    elif config.format == "gguf":
        from .gguf_file import write_gguf

        write_gguf(base, adapter, staging / f"{name}-{config.gguf_type}.gguf", config.gguf_type, tokenizer_folder,
                   Path(source_gguf) if source_gguf else None, name)
    else:
        from .gguf_file import write_gguf_adapter

        write_gguf_adapter(base, adapter, staging / f"{name}-lora.gguf", name)
