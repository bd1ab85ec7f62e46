"""The generation engine: one base model in memory, any number of LoRA adapters switched per request.

Requests are decoded together (`scheduler.Scheduler` driving a `decoding.DecodeBatch`: continuous batching on one
KV cache), each with its own adapter (PEFT `adapter_names`), sampling settings and random generator, so a
request's result does not depend on what else is in its batch. Text streams out token by token; a request ends at
EOS, a stop string, its token budget, or when its caller cancels it. On an x86 CPU in fp32 the model's linear
layers multiply by oneDNN-prepacked weights (`prepack.py`). The engine is a `protocols.DecodingModel`; what it
offers (model names, templates, the `auto` route, prompts) is its `catalog`."""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..adapters import attach, parse_adapter_specs, read_card, selected
from ..errors import ModelError
from ..models import LoadedModel, inference_dtype, load_model, pick_device
from ..prompts import load_template
from .catalog import Catalog, adapter_specs, context_length
from .config import EngineConfig
from .lowbit import lowbit_applies, quantize_linear_layers
from .prepack import prepack_linear_layers, prepacking_applies
from .requests import Delta, Request, cut_at_stop
from .routing import BASE
from .scheduler import Scheduler

log = logging.getLogger(__name__)


PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class Engine:
    """The catalog's models, loaded: the base model once, each adapter attached to it (PEFT), decoding batches."""

    def __init__(self, base_model: str = "default", lora_weights: list[str] | None = None,
                 prompt_template_name: str = "bactrian", load_8bit: bool = False, load_4bit: bool = False,
                 auto_fallback: str = "multilingual", dtype: str = "auto", prepacked_weights: bool = True,
                 kv_cache_gb: float = 0.0, quantization: str = "auto", speculation: str = "prompt_lookup"):
        device = pick_device()
        self.loaded: LoadedModel = load_model(base_model, load_8bit, load_4bit, device, inference_dtype(dtype, device))
        self.model, self.tokenizer, self.device = self.loaded.model, self.loaded.tokenizer, self.loaded.device
        self.cache_keyword = cache_keyword(self.model)
        specs = parse_adapter_specs(lora_weights or [])
        self.catalog = Catalog(self.tokenizer, load_template(prompt_template_name),
                               [read_card(name, path) for name, path in specs.items()], auto_fallback,
                               context_length(self.model.config))
        for name, path in specs.items():
            self._attach(name, path)
        self.speculation = speculation == "prompt_lookup" and speculation_is_exact(self.model)
        self.mode = {"dtype": str(self.model.dtype).removeprefix("torch."), "quantization": "none",
                     "prepacked_weights": False, "speculation": "prompt_lookup" if self.speculation else "off"}
        if quantization != "auto":
            self._quantize(quantization)
        if prepacked_weights and prepacking_applies(self.model):  # the layers left in fp32
            prepack_linear_layers(self.model)
            self.mode["prepacked_weights"] = True
        log.info("Decoding mode: %s", ", ".join(f"{key} {value}" for key, value in self.mode.items()))
        self.model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        self.model.eval()
        self.kv_bytes_per_token = kv_bytes_per_token(self.model.config, next(self.model.parameters()).dtype)
        self.kv_budget_bytes = int(kv_cache_gb * (1 << 30)) or memory_left(self.device) // 2
        log.info("KV cache budget %.1f GB (%d tokens of one row)", self.kv_budget_bytes / (1 << 30),
                 self.kv_budget_bytes // self.kv_bytes_per_token)
        self.lock = threading.Lock()  # one batch step (or eval's scoring) on the model at a time

    def _attach(self, name: str, path: Path) -> None:
        self.model = attach(self.model, name, path)
        log.info("Loaded adapter %s from %s (template %s, languages %s)", name, path,
                 self.catalog.template_for(name).name, ",".join(self.catalog.adapters[name].languages) or "unknown")

    def _quantize(self, mode: str) -> None:
        if not lowbit_applies(self.model, mode):
            raise ModelError(f"--quantization {mode} runs on an x86 CPU (fbgemm for fp16); on a GPU load the base in "
                             "8 bits with --load_8bit (bitsandbytes) instead.")
        quantize_linear_layers(self.model, mode)
        self.mode["quantization"] = mode

    @property
    def eos_token_ids(self) -> set[int]:
        return {self.tokenizer.eos_token_id, *_generation_eos(self.model)}

    @contextmanager
    def using(self, name: str) -> Iterator[Any]:
        """The model answering with `name` (an adapter or `base`) for work outside the decoding batch (eval's
        scoring): it holds the engine's lock and restores the adapter that was active."""
        with self.lock, selected(self.model, name) as model:
            yield model

    # -- generation -------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[tuple[str, str, int]]:
        """(text, finish_reason, completion tokens) of each request, decoded together."""
        texts = [""] * len(requests)
        reasons = [""] * len(requests)
        counts = [0] * len(requests)
        for delta in self.stream(requests):
            texts[delta.index] += delta.text
            if delta.finish_reason:
                reasons[delta.index], counts[delta.index] = delta.finish_reason, delta.completion_tokens
        return list(zip(texts, reasons, counts))

    def stream(self, requests: Iterable[Request], max_rows: int = 0) -> Iterator[Delta]:
        """Deltas of all requests (numbered in the order given) as they are decoded. With `max_rows`, at most that
        many are decoded at once and the next ones are taken (lazily, from any iterable) as rows finish, so the
        batch stays full."""
        scheduler = Scheduler(self, max_rows)
        numbered = enumerate(requests)

        def fill() -> None:
            while scheduler.room > 0 and (taken := next(numbered, None)) is not None:
                scheduler.admit(*taken)

        fill()
        while len(scheduler):
            yield from scheduler.step()
            fill()

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                adapters: Sequence[str], keep: int = 1) -> torch.Tensor:
        """The last `keep` positions' logits of one step of rows (each with its own adapter), extending `cache`."""
        kwargs: dict[str, Any] = {}
        if self.catalog.adapters:
            kwargs["adapter_names"] = [_peft_name(adapter) for adapter in adapters]
        kwargs[self.cache_keyword] = cache
        output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=keep, **kwargs)
        return output.logits

    @torch.no_grad()
    def beam_search(self, index: int, request: Request) -> Delta:
        params = request.params
        ids = torch.tensor([request.prompt_ids], device=self.device)
        kwargs: dict[str, Any] = {}
        if self.catalog.adapters:
            kwargs["adapter_names"] = [_peft_name(request.adapter)]
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     num_beams=params.num_beams, max_new_tokens=params.max_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new = output[0, ids.shape[1]:].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        ended = stopped or (new and new[-1] == self.tokenizer.eos_token_id)
        return Delta(index, text, "stop" if ended else "length", len(new))


def _contiguous_input(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The head's input with plain strides. A prefill keeps each row's last position only (`logits_to_keep=1`): a
    strided [rows, 1, hidden] view (which `.contiguous()` leaves as it is when rows is 1), and torch 2.13's
    `linear` multiplies such a view by a batched matmul over a copy of the head's weight expanded to every row: in
    bf16 on a CPU, 2.7 GB copied and 7 s for 8 rows of Gemma 3 270M, 1.2 s for one, where a plain input takes a
    product of milliseconds."""
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


def speculation_is_exact(model: Any) -> bool:
    """Whether checking guesses keeps greedy answers those of plain decoding: in fp32 arithmetic (the fp16 and int8
    weight modes included) a step's numbers do not depend on how many positions it holds; in bf16 or fp16 they
    round differently at 1 and at 1 + k positions, and an answer would change where two tokens nearly tie (8 of
    16 Gemma 3 270M answers did in bf16: benchmarks/RESULTS.md), so there a greedy row decodes plainly."""
    exact = model.dtype == torch.float32
    if not exact:
        log.info("Speculation off: the model computes in %s, where a checked guess could change a greedy answer",
                 model.dtype)
    return exact


def cache_keyword(model: Any) -> str:
    """The forward's name for the KV cache: `cache` from transformers 5.24 on, `past_key_values` before (a name the
    forward does not know is swallowed by its **kwargs, and every step would see only its newest token)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """What one token of one row holds in the KV cache: keys and values of every layer."""
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def memory_left(device: torch.device) -> int:
    """Bytes free for decoding once the model is loaded: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _generation_eos(model: Any) -> list[int]:
    """The end tokens the model's generation config names besides the tokenizer's (Gemma's <end_of_turn>)."""
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    if config_eos is None:
        return []
    return list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]


def _peft_name(adapter: str) -> str:
    return PEFT_BASE if adapter == BASE else adapter


def build_engine(config: EngineConfig) -> Engine:
    return Engine(config.base_model, adapter_specs(config), config.prompt_template_name, config.load_8bit,
                  config.load_4bit, config.auto_fallback, config.dtype, config.prepacked_weights, config.kv_cache_gb,
                  config.quantization, config.speculation)
