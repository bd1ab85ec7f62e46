"""The generation engine: one base model in memory, any number of LoRA adapters switched per request.

Requests are decoded together in one batch (left padding, KV cache), each with its own adapter (PEFT
`adapter_names`), sampling settings and random generator, so a request's result does not depend on what else
is in its batch. Text streams out token by token; a request ends at EOS, a stop string, its token budget, or
when its caller cancels it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError
from ..manifest import read_manifest
from ..models import LoadedModel, load_model
from ..prompts import PromptTemplate, load_template, template_from_dict
from .config import EngineConfig

log = logging.getLogger(__name__)

BASE = "base"  # the name that selects the base model without any adapter
AUTO = "auto"  # route by the language of the input
_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Adapter:
    name: str
    path: Path
    template: PromptTemplate
    languages: list[str]


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    num_beams: int = 1


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str = BASE
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Delta:
    """A piece of a request's output: new text, and when it is done, why (stop or length)."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """`name=path` or a bare path (named after its folder)."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path_obj = Path(path)
        name = name or path_obj.resolve().name
        if name in (BASE, AUTO):
            raise ConfigError(f"--lora_weights {spec}: '{name}' is a reserved name; pick another.")
        if name in adapters:
            raise ConfigError(f"--lora_weights {spec}: two adapters are named '{name}'.")
        if not (path_obj / "adapter_config.json").is_file():
            raise ConfigError(f"--lora_weights {spec}: {path_obj} has no adapter_config.json.")
        adapters[name] = path_obj
    return adapters


def adapters_in(folder: str) -> list[str]:
    """Every adapter folder directly below `folder`, as name=path specs (--adapters_dir)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--adapters_dir {folder}: not a folder.")
    found = sorted(path for path in root.iterdir() if (path / "adapter_config.json").is_file())
    if not found:
        raise ConfigError(f"--adapters_dir {folder}: no adapter folders (with adapter_config.json) inside.")
    return [f"{path.name}={path}" for path in found]


class Engine:
    def __init__(self, base_model: str = "default", lora_weights: list[str] | None = None,
                 prompt_template_name: str = "bactrian", load_8bit: bool = False, load_4bit: bool = False):
        self.loaded: LoadedModel = load_model(base_model, load_8bit, load_4bit)
        self.tokenizer = self.loaded.tokenizer
        self.default_template = load_template(prompt_template_name)
        self.adapters: dict[str, Adapter] = {}
        self.model = self.loaded.model
        for name, path in parse_adapter_specs(lora_weights or []).items():
            self._add_adapter(name, path)
        self.model.eval()
        self.lock = threading.Lock()  # one batch on the model at a time
        self.context_length = _context_length(self.model.config)

    # -- adapters ---------------------------------------------------------------------------------------
    def _add_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        try:
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                self.model.load_adapter(str(path), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"--lora_weights {name}={path}: does not fit this base model ({exc}).") from exc
        manifest = read_manifest(path) or {}
        template = (template_from_dict(manifest["template"]) if "template" in manifest
                    else self.default_template)
        self.adapters[name] = Adapter(name, path, template, manifest.get("languages", []))
        log.info("Loaded adapter %s from %s (template %s, languages %s)", name, path, template.name,
                 ",".join(self.adapters[name].languages) or "unknown")

    @property
    def model_names(self) -> list[str]:
        return [BASE, *self.adapters, AUTO]

    def template_for(self, adapter: str) -> PromptTemplate:
        return self.adapters[adapter].template if adapter in self.adapters else self.default_template

    def resolve_adapter(self, name: str, text: str = "") -> tuple[str, str | None]:
        """The adapter to use for a request naming `name`, and the detected language when name is auto."""
        if name == AUTO:
            return self.route(text)
        if name != BASE and name not in self.adapters:
            raise KeyError(name)
        return name, None

    def route(self, text: str) -> tuple[str, str | None]:
        """auto: the adapter for the input's language, else a multilingual one, else the base model."""
        from ..langid import detect_language

        lang = detect_language(text)
        for name, adapter in self.adapters.items():
            if lang and (adapter.languages == [lang] or name == lang):
                return name, lang
        multilingual = [name for name, adapter in self.adapters.items() if len(adapter.languages) > 1]
        if lang:
            covering = [name for name in multilingual if lang in self.adapters[name].languages]
            if covering:
                return covering[0], lang
        return (multilingual[0] if multilingual else BASE), lang

    # -- prompts ----------------------------------------------------------------------------------------
    def render(self, adapter: str, instruction: str, input: str = "") -> list[int]:
        template = self.template_for(adapter)
        text = template.render(instruction, input, self.tokenizer)
        return self.tokenizer(text, add_special_tokens=not template.uses_chat_template)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def encode_chat(self, adapter: str, messages: list[dict[str, str]]) -> list[int]:
        """A conversation as the adapter's prompt: the tokenizer's chat template for `chat`, else each earlier
        exchange rendered with the instruction template, then the last user message as the instruction."""
        template = self.template_for(adapter)
        if template.uses_chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['content']}\n\n" for m in messages if m["role"] == "system")
        user = ""
        for message in (m for m in messages if m["role"] != "system"):
            if message["role"] == "user":
                user = f"{user}\n\n{message['content']}" if user else message["content"]
            else:
                text += template.render(user) + message["content"] + "\n\n"
                user = ""
        return self.encode(text + template.render(user))

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

    def stream(self, requests: list[Request]) -> Iterator[Delta]:
        """Deltas of all requests as they are decoded. Beam search requests run apart (no streaming)."""
        beams = [i for i, request in enumerate(requests) if request.params.num_beams > 1]
        sampled = [i for i in range(len(requests)) if i not in beams]
        with self.lock:
            if sampled:
                yield from _Decoding(self, [requests[i] for i in sampled], sampled).run()
            for index in beams:
                yield self._beam_search(index, requests[index])

    @torch.no_grad()
    def _beam_search(self, index: int, request: Request) -> Delta:
        params = request.params
        ids = torch.tensor([request.prompt_ids], device=self.loaded.device)
        kwargs: dict[str, Any] = {}
        if self.adapters:
            kwargs["adapter_names"] = [_peft_name(request.adapter)]
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     num_beams=params.num_beams, max_new_tokens=params.max_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new = output[0, ids.shape[1]:].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, params.stop)
        ended = stopped or (new and new[-1] == self.tokenizer.eos_token_id)
        return Delta(index, text, "stop" if ended else "length", len(new))


def _peft_name(adapter: str) -> str:
    return _PEFT_BASE if adapter == BASE else adapter


def _context_length(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 2048


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(positions)], True) if positions else (text, False)


class _Row:
    """One request's decoding state."""

    def __init__(self, engine: Engine, request: Request, index: int):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.emitted = ""
        self.finished: str | None = None
        self.generator = None
        if request.params.temperature > 0:
            self.generator = torch.Generator(device=engine.loaded.device)
            self.generator.manual_seed(request.params.seed if request.params.seed is not None
                                       else int(torch.randint(0, 2**62, (1,))))


class _Decoding:
    """A batch decoded step by step with a shared KV cache."""

    def __init__(self, engine: Engine, requests: list[Request], indices: list[int]):
        self.engine = engine
        self.rows = [_Row(engine, request, index) for request, index in zip(requests, indices)]
        self.eos = {engine.tokenizer.eos_token_id, *_extra_eos(engine)}

    def run(self) -> Iterator[Delta]:
        from transformers import DynamicCache

        engine, device = self.engine, self.engine.loaded.device
        width = max(len(row.request.prompt_ids) for row in self.rows)
        pad = engine.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.request.prompt_ids)) + r.request.prompt_ids
                                  for r in self.rows], device=device)
        mask = torch.tensor([[0] * (width - len(r.request.prompt_ids)) + [1] * len(r.request.prompt_ids)
                             for r in self.rows], device=device)
        kwargs: dict[str, Any] = {}
        if engine.adapters:
            kwargs["adapter_names"] = [_peft_name(row.request.adapter) for row in self.rows]
        cache = DynamicCache(config=engine.model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        while True:
            with torch.no_grad():
                output = engine.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                      cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
            next_tokens = self._choose(output.logits[:, -1].float())
            yield from self._advance(next_tokens)
            if all(row.finished for row in self.rows):
                return
            input_ids = torch.tensor([[token] for token in next_tokens], device=device)
            mask = torch.cat([mask, mask.new_ones(len(self.rows), 1)], dim=1)
            positions = positions[:, -1:] + 1

    def _choose(self, logits: torch.Tensor) -> list[int]:
        chosen = []
        for row, row_logits in zip(self.rows, logits):
            params = row.request.params
            if row.finished or params.temperature <= 0:
                chosen.append(int(row_logits.argmax()))
                continue
            probs = _filtered_probs(row_logits / params.temperature, params.top_k, params.top_p)
            chosen.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return chosen

    def _advance(self, next_tokens: list[int]) -> Iterator[Delta]:
        tokenizer = self.engine.tokenizer
        for row, token in zip(self.rows, next_tokens):
            if row.finished:
                continue
            if row.request.cancelled.is_set():
                row.finished = "cancelled"
                continue
            params = row.request.params
            if token in self.eos:
                row.finished = "stop"
            else:
                row.tokens.append(token)
            text = tokenizer.decode(row.tokens, skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, params.stop)
            if stopped:
                row.finished = "stop"
            elif not row.finished and len(row.tokens) >= params.max_new_tokens:
                row.finished = "length"
            ready = text if row.finished else _safe_prefix(text, params.stop)
            delta = ready[len(row.emitted):]
            row.emitted = ready
            if delta or row.finished:
                yield Delta(row.index, delta, row.finished,
                            len(row.tokens) + (1 if token in self.eos else 0))


def _safe_prefix(text: str, stops: list[str]) -> str:
    """Text that can be shown now: no half-decoded character, no possible start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold]


def _filtered_probs(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs / probs.sum()


def _extra_eos(engine: Engine) -> list[int]:
    config_eos = getattr(engine.model.generation_config, "eos_token_id", None)
    if config_eos is None:
        return []
    return list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]



def build_engine(config: EngineConfig) -> Engine:
    specs = list(config.lora_weights) + (adapters_in(config.adapters_dir) if config.adapters_dir else [])
    return Engine(config.base_model, specs, config.prompt_template_name, config.load_8bit, config.load_4bit)
