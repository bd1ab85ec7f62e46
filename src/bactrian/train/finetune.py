"""`bactrian finetune`: LoRA instruction tuning (SFT) or preference tuning (DPO, ORPO) of a base model, start to
end: validate the options, load the model, build the data, attach LoRA, run the loop, save the adapter with its
model card and manifest. With --per_language, one such run per language."""

from __future__ import annotations

import logging
import resource
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .. import languages
from ..adapters import ADAPTER_WEIGHTS
from ..errors import ConfigError, DataError, ModelError
from ..fileio import atomic_write_json, disk_full_named, fsync_tree, holds_output
from ..manifest import write_manifest
from ..models import LoadedModel, allow_tf32, load_model, training_dtype
from ..prompts import PromptTemplate, load_template
from . import dataset as ds
from . import preference, token_cache
from .checkpoints import ADAPTER_STAGING, STATE_FILE, remove_partials
from .config import FinetuneConfig
from .distributed import DistributedContext
from .loop import Trainer
from .model_card import write_model_card
from .per_language import finetune_per_language
from .run_identity import check_output_dir

log = logging.getLogger(__name__)


@holds_output("output_dir", "finetune")
def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train a LoRA adapter into config.output_dir (one per language with --per_language); returns metrics. Under
    torchrun the process group lives as long as the command: one for every language of --per_language."""
    context = DistributedContext.from_env()
    try:
        return finetune_per_language(config, train_adapter) if config.per_language else train_adapter(config)
    finally:
        context.close()


def train_adapter(config: FinetuneConfig) -> dict[str, Any]:
    """One run: load, tokenize, attach LoRA, train, save the adapter into config.output_dir."""
    context = DistributedContext.from_env()
    validate(config, context.world_size)
    template = load_template(config.prompt_template_name)  # an unknown template fails before the model loads
    device = context.device()
    if config.bf16 != "false":
        allow_tf32(device)
    loaded = load_model(config.base_model, config.load_8bit, config.load_4bit, device=device,
                        dtype=training_dtype(config.bf16, device))
    check_target_modules(loaded.model, config.lora_target_modules)
    train, val = prepare_examples(config, loaded.tokenizer, template, context)
    model = attach_lora(loaded, config)
    trainer = Trainer(config, context, model, loaded.tokenizer, train, val)
    check_output_dir(trainer.output_dir, trainer.identity)
    if context.is_main:
        remove_partials(trainer.output_dir)
    if config.resume_from_checkpoint:
        trainer.resume(config.resume_from_checkpoint)
    if context.is_main:
        log.info("Training on %d examples (%s; %d target tokens an epoch), %d validation, %d steps; peak RSS "
                 "before training %d MB.", len(train), train.language_counts(), train.target_tokens(), len(val),
                 trainer.steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    metrics = trainer.run()
    if context.is_main:
        save_adapter(trainer, loaded, template, train, val, metrics)
    context.barrier()
    return metrics


def validate(config: FinetuneConfig, world_size: int) -> None:
    """Errors that need no data or model, raised before anything is loaded."""
    per_step = config.micro_batch_size * world_size
    if config.global_batch_size <= 0 or config.micro_batch_size <= 0:
        raise ConfigError("--global_batch_size (--batch_size) and --micro_batch_size must be positive.")
    if config.global_batch_size % per_step:
        raise ConfigError(
            f"--global_batch_size {config.global_batch_size} is not divisible by --micro_batch_size "
            f"{config.micro_batch_size} x {world_size} process(es); gradient accumulation needs a whole number of "
            "micro-batches."
        )
    if not config.data_path:
        raise ConfigError("--data_path is required (a file, a folder or a hub dataset id).")
    if config.cutoff_len < 2:
        raise ConfigError("--cutoff_len must be at least 2.")
    if config.method != "sft" and config.beta <= 0:
        raise ConfigError(f"--beta {config.beta}: must be positive.")
    if config.init_adapter and not (Path(config.init_adapter) / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"--init_adapter {config.init_adapter}: no {ADAPTER_WEIGHTS} there.")
    if config.save_total_limit < 1:
        raise ConfigError(f"--save_total_limit {config.save_total_limit}: keep at least 1 checkpoint (it is the one a "
                          "resumed run continues from); --save_steps 0 saves none.")


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__}
    missing = [target for target in targets if target not in names]
    if missing:
        raise ConfigError(f"--lora_target_modules {','.join(missing)}: not in this model. "
                          f"Its linear modules: {', '.join(sorted(names))}.")


def prepare_examples(config: FinetuneConfig, tokenizer: Any, template: PromptTemplate,
                     context: DistributedContext | None = None) -> tuple[token_cache.ExampleSet, list[ds.Example]]:
    """The training rows (an index into the token cache) and the validation examples (held in memory)."""
    rows = token_cache.tokenized_rows(config, tokenizer, template, context or DistributedContext())
    wanted = rows.rows_in(languages.parse_langs(config.lang))
    if not len(wanted):
        raise DataError(f"No instruction records to train on in {config.data_path} (rows with an empty output or "
                        "no target token within --cutoff_len are left out); check the data and --cutoff_len.")
    train, val = ds.stratified_split(rows.lang_codes[wanted], config.val_set_size)
    return token_cache.ExampleSet(rows, wanted[train]), rows.take(wanted[val])


def keep_in_dtype(model: Any, dtype: torch.dtype) -> None:
    """PEFT's k-bit preparation upcasts the base's norms, embeddings and head to fp32; with bf16 compute that
    makes the whole residual stream fp32 (twice the activations of a bf16 run): they go back to `dtype`. The
    quantized weights and the LoRA matrices (made after this, in fp32 under autocast) are left alone."""
    if dtype == torch.float32:
        return
    for parameter in model.parameters():
        if parameter.dtype == torch.float32:
            parameter.data = parameter.data.to(dtype)


def attach_lora(loaded: LoadedModel, config: FinetuneConfig) -> Any:
    """A new LoRA adapter on the base, or --init_adapter's weights to go on training (with dpo, also loaded a
    second time, frozen, as the reference)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if config.load_8bit or config.load_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        keep_in_dtype(model, training_dtype(config.bf16, loaded.device))
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)
    if config.init_adapter:
        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
        if config.method == "dpo":
            model.load_adapter(config.init_adapter, adapter_name=preference.REFERENCE, is_trainable=False)
        return model
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def save_adapter(trainer: Trainer, loaded: LoadedModel, template: PromptTemplate, train: token_cache.ExampleSet,
                 val: list[ds.Example], metrics: dict[str, Any]) -> None:
    config, output_dir = trainer.config, trainer.output_dir
    staging = output_dir / ADAPTER_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    trainer.check_finite(f"{output_dir}: the adapter, not saved")
    with disk_full_named(staging):
        trainer.model.save_pretrained(staging, selected_adapters=["default"])  # not DPO's frozen reference
    saved = load_file(str(staging / ADAPTER_WEIGHTS))
    expected = sum(1 for name, param in trainer.model.named_parameters() if param.requires_grad)
    if len(saved) != expected or not saved:  # the original's 443-byte empty adapters
        raise ModelError(f"{staging / ADAPTER_WEIGHTS}: saved {len(saved)} tensors, expected {expected}.")
    with disk_full_named(staging):
        loaded.tokenizer.save_pretrained(staging)
    fsync_tree(staging)
    for path in staging.iterdir():  # whole files move into place; none is ever half-written
        path.replace(output_dir / path.name)
    staging.rmdir()
    atomic_write_json(output_dir / STATE_FILE, asdict(trainer.state))
    examples = {"train": train.language_counts(), "validation": dict(sorted(Counter(e.lang for e in val).items())),
                "train_target_tokens_per_epoch": train.target_tokens()}
    langs = sorted(examples["train"])
    write_model_card(output_dir, config, langs, examples, metrics)
    write_manifest(output_dir, "adapter", config,  # written last: its presence marks a finished adapter
                   base_model={"spec": config.base_model, **loaded.source.identity},
                   template=template.to_dict(), languages=langs, data=trainer.identity["data"],
                   run=trainer.identity, examples=examples, metrics=metrics)
