"""The model card (`README.md`) written into every adapter folder: what it is, how it was made, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__, languages
from ..fileio import atomic_write_bytes
from .config import FinetuneConfig


def write_model_card(folder: Path, config: FinetuneConfig, langs: list[str], examples: dict[str, Any],
                     metrics: dict[str, Any]) -> None:
    names = ", ".join(f"{languages.get(code).name} (`{code}`)" for code in langs)
    per_lang = metrics.get("eval_loss_per_lang", {})
    loss_rows = "\n".join(f"| {code} | {examples['train'].get(code, 0)} | {per_lang.get(code, '-')} |"
                          for code in langs)
    tags = "\n".join(f"- {code}" for code in langs)
    card = f"""---
library_name: peft
base_model: {config.base_model}
language:
{tags}
tags:
- bactrian
- lora
---
# LoRA adapter: {names}

Trained with [bactrian](https://pypi.org/project/bactrian/) {__version__} `finetune` on `{config.base_model}`,
prompt template `{config.prompt_template_name}`.

## Data
{", ".join(f"`{path}`" for path in config.data_path)}; {sum(examples['train'].values())} training and
{sum(examples['validation'].values())} validation examples (stratified by language, seed 42).

## Settings
LoRA r {config.lora_r}, alpha {config.lora_alpha}, dropout {config.lora_dropout}, targets
{", ".join(config.lora_target_modules)}; batch {config.global_batch_size} (micro {config.micro_batch_size}),
learning rate {config.learning_rate}, cutoff {config.cutoff_len}, {metrics.get("steps")} steps, packing
{config.packing}, train on inputs {config.train_on_inputs}, seed {config.seed}. The full configuration is in
`bactrian.json`.

## Metrics
Eval loss {metrics.get("eval_loss", "-")} (at the start: {metrics.get("eval_loss_at_start", "-")}); final train loss
{metrics.get("train_loss")}.

| language | training examples | eval loss |
| --- | ---: | ---: |
{loss_rows}

## Use
With peft:
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{config.base_model}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```
With bactrian:
```bash
bactrian chat --base_model {config.base_model} --lora_weights path/to/this/folder
bactrian serve --base_model {config.base_model} --lora_weights path/to/this/folder
```
"""
    atomic_write_bytes(folder / "README.md", card.encode("utf-8"))
