"""The LoRA adapter artifact: a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`) plus the
`bactrian.json` manifest finetune writes beside them (template, languages, metrics). Training writes it;
inference, export and eval read it through here: the file names, `name=path` specs and `--adapters_dir`
folders, and the card of what an adapter is for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import languages
from .errors import ConfigError, ModelError
from .manifest import read_manifest
from .prompts import PromptTemplate, template_from_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE = "base"  # the name that selects the base model without any adapter
RESERVED_NAMES = (BASE, "auto")  # model names that select the base model and the language route


def load_adapter_tensors(path: Path) -> dict[str, Any]:
    """The tensors of an adapter's safetensors file, or a ModelError naming it (a truncated copy, a damaged disk)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc}); it may be cut short (an interrupted "
                         "copy or a full disk). Copy it again, or use another checkpoint.") from None


def is_adapter_folder(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass
class AdapterCard:
    """What an adapter is for: its languages and the eval loss measured on each at training time."""

    name: str
    languages: list[str]
    eval_loss: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    template: PromptTemplate | None = None  # None: the default template of whoever uses it

    def covers(self, lang: str) -> bool:
        return lang in self.languages

    def loss_on(self, lang: str) -> float:
        return self.eval_loss.get(lang, float("inf"))

    def mean_loss(self) -> float:
        return sum(self.eval_loss.values()) / len(self.eval_loss) if self.eval_loss else float("inf")


def read_card(name: str, path: Path) -> AdapterCard:
    """The card of the adapter folder `path`, from its `bactrian.json` (an adapter without one covers the language
    it is named after, if any)."""
    manifest = read_manifest(path) or {}
    template = template_from_dict(manifest["template"]) if "template" in manifest else None
    return AdapterCard(name, _languages(name, manifest), _eval_losses(manifest), Path(path), template)


def _languages(name: str, manifest: dict[str, Any]) -> list[str]:
    return list(manifest.get("languages") or ([languages.get(name).code] if languages.is_known(name) else []))


def _eval_losses(manifest: dict[str, Any]) -> dict[str, float]:
    metrics = manifest.get("metrics") or {}
    per_lang = metrics.get("eval_loss_per_lang") or {}
    langs = manifest.get("languages") or []
    if not per_lang and len(langs) == 1 and metrics.get("eval_loss") is not None:
        per_lang = {langs[0]: metrics["eval_loss"]}
    return {lang: float(loss) for lang, loss in per_lang.items()}


def split_spec(spec: str) -> tuple[str, Path]:
    """`name=path` or a bare path (named after its folder) as (name, path), unchecked."""
    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    return name or Path(path).resolve().name, Path(path)


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """`name=path` or a bare path (named after its folder), checked: names unique and not reserved, folders
    holding an adapter."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, path_obj = split_spec(spec)
        if name in RESERVED_NAMES:
            raise ConfigError(f"--lora_weights {spec}: '{name}' is a reserved name; pick another.")
        if name in adapters:
            raise ConfigError(f"--lora_weights {spec}: two adapters are named '{name}'.")
        if not is_adapter_folder(path_obj):
            raise ConfigError(f"--lora_weights {spec}: {path_obj} has no {ADAPTER_CONFIG}.")
        adapters[name] = path_obj
    return adapters


def adapters_in(folder: str) -> list[str]:
    """Every adapter folder directly below `folder`, as name=path specs (--adapters_dir)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--adapters_dir {folder}: not a folder.")
    found = sorted(path for path in root.iterdir() if is_adapter_folder(path))
    if not found:
        raise ConfigError(f"--adapters_dir {folder}: no adapter folders (with {ADAPTER_CONFIG}) inside.")
    return [f"{path.name}={path}" for path in found]


def attach(model: Any, name: str, path: Path) -> Any:
    """`model` with the adapter at `path` loaded under `name` (the first adapter wraps it in a PeftModel)."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(f"--lora_weights {name}={path}: does not fit this base model ({exc}).") from exc


@contextmanager
def selected(model: Any, name: str) -> Iterator[Any]:
    """`model` answering with adapter `name` (no adapter for `base`); the adapter active before is restored."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield model
    elif name == BASE:
        with model.disable_adapter():
            yield model
    else:
        previous = model.active_adapter
        model.set_adapter(name)
        try:
            yield model
        finally:
            model.set_adapter(previous)
