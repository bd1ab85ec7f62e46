"""`bactrian finetune`: LoRA instruction tuning, readable top to bottom.

The loss of a step is the sum of the losses of every target token in the global batch divided by their
count, whatever the micro-batching, packing or number of processes. Checkpoints hold the adapter, optimizer,
scheduler, RNG states and the step; the data order is a function of (seed, epoch), so a resumed run continues
exactly where the interrupted one stopped."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pickle
import resource
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .. import languages
from ..adapters import ADAPTER_WEIGHTS, load_adapter_tensors
from ..errors import ConfigError, DataError, ModelError, TrainingError
from ..fileio import atomic_write_bytes, atomic_write_json, disk_full_named, fsync_dir, fsync_tree, holds_output
from ..manifest import fingerprint_inputs, read_manifest, write_manifest
from ..models import LoadedModel, auto_dtype, bactrian_home, load_model, load_tokenizer, resolve
from ..prompts import PromptTemplate, load_template
from ..records import sources
from . import dataset as ds
from . import preference, token_cache, tokenize
from .config import FinetuneConfig
from .distributed import DistributedContext
from .loss import token_losses
from .model_card import write_model_card

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
# Settings a resumed run must share with the interrupted one to continue it exactly: with the data files'
# hashes, they identify a run. Checkpoints of another run are never resumed or pruned.
RUN_KEYS = ("base_model", "lang", "batch_size", "learning_rate", "cutoff_len", "val_set_size", "lora_r",
            "lora_alpha", "lora_target_modules", "train_on_inputs", "seed", "packing", "lang_temperature",
            "warmup_steps", "prompt_template_name", "max_steps", "num_epochs", "method", "beta", "init_adapter")


@dataclass
class TrainState:
    step: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)


def validate(config: FinetuneConfig, world_size: int) -> None:
    """Errors that need no data or model, raised before anything is loaded."""
    per_step = config.micro_batch_size * world_size
    if config.batch_size <= 0 or config.micro_batch_size <= 0:
        raise ConfigError("--batch_size and --micro_batch_size must be positive.")
    if config.batch_size % per_step:
        raise ConfigError(
            f"--batch_size {config.batch_size} is not divisible by --micro_batch_size {config.micro_batch_size}"
            f" x {world_size} process(es); gradient accumulation needs a whole number of micro-batches."
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
    for folder in sorted(list_checkpoints(output_dir), key=_checkpoint_step):
        saved = _saved_identity(folder)
        differences = identity_differences(saved, identity) if saved else []
        if differences:
            raise ConfigError(f"{folder} belongs to another run ({'; '.join(differences)}). Use another "
                              "--output_dir, or remove its checkpoints to start this run there.")


def remove_partials(output_dir: Path) -> None:
    """Staging folders a killed run left behind (a checkpoint or the adapter being written)."""
    for leftover in [*output_dir.glob(".checkpoint-*.partial"), output_dir / ".adapter.partial"]:
        if leftover.is_dir():
            log.info("Removing %s, left by an interrupted run.", leftover)
            shutil.rmtree(leftover)


def _saved_identity(folder: Path) -> dict[str, Any] | None:
    state = folder / STATE_FILE
    return json.loads(state.read_text()).get("run") if state.is_file() else None


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__}
    missing = [target for target in targets if target not in names]
    if missing:
        raise ConfigError(f"--lora_target_modules {','.join(missing)}: not in this model. "
                          f"Its linear modules: {', '.join(sorted(names))}.")


def attach_lora(loaded: LoadedModel, config: FinetuneConfig) -> Any:
    """A new LoRA adapter on the base, or --init_adapter's weights to go on training (with dpo, also loaded a
    second time, frozen, as the reference)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if config.load_8bit or config.load_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
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


def uses_bf16_autocast(setting: str, device_type: str) -> bool:
    """--bf16: `auto` autocasts on a CPU where the dtype rule picks bf16 (logged with its reason); on a GPU the
    weights are already in the rule's dtype."""
    if setting != "auto":
        return setting == "true"
    if device_type != "cpu":
        return False
    choice = auto_dtype(torch.device("cpu"))
    log.info("bf16 auto: autocast %s, %s", "on" if choice.dtype == torch.bfloat16 else "off", choice.reason)
    return choice.dtype == torch.bfloat16


def total_steps(config: FinetuneConfig, num_examples: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_epochs * math.ceil(num_examples / config.batch_size)))


class Trainer:
    def __init__(self, config: FinetuneConfig, context: DistributedContext, model: Any, tokenizer: Any,
                 train: token_cache.ExampleSet, val: list[ds.Example]):
        from transformers import get_linear_schedule_with_warmup

        self.config, self.context, self.model, self.tokenizer = config, context, model, tokenizer
        self.train, self.val = train, val
        self.output_dir = Path(config.output_dir)
        self.steps = total_steps(config, len(train))
        self.params = [param for param in model.parameters() if param.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=0.0)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, config.warmup_steps, self.steps)
        self.state = TrainState()
        self.writer = None
        self.device_type = next(model.parameters()).device.type
        self.autocast = uses_bf16_autocast(config.bf16, self.device_type)
        self.identity = run_identity(config)
        self.step_rewards: dict[str, Any] = {}  # preference methods: the last step's rewards, for the log

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        self._open_reporting()
        schedule = ds.global_batches(self.train.lang_codes, config.batch_size, config.lang_temperature,
                                     config.seed, self.state.step, self.steps)
        bar = tqdm(total=self.steps, initial=self.state.step, desc="finetune", unit="step",
                   disable=not (self.context.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        start_metrics = self.evaluate() if self.val and self.state.step == 0 else {}
        if start_metrics:
            self._log({"step": 0, **start_metrics})
        started, tokens_seen = time.perf_counter(), 0
        for step, indices in schedule:
            loss, tokens = self.train_step(self.train.take(indices))
            tokens_seen += tokens
            self.state.step = step + 1
            rate = tokens_seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            self._after_step(loss, rate)
        bar.close()
        metrics = self.evaluate() if self.val else {}
        if start_metrics:
            metrics["eval_loss_at_start"] = start_metrics["eval_loss"]
        metrics.update(train_loss=self._last("train_loss"), steps=self.state.step,
                       train_tokens_per_second=round(tokens_seen / max(time.perf_counter() - started, 1e-9), 1))
        self._log(metrics)
        if self.writer is not None:
            self.writer.close()
        return metrics

    def train_step(self, batch: list[ds.Example] | list[ds.Pair]) -> tuple[float, int]:
        """One optimizer step on one global batch; returns its loss (SFT: the mean token loss) and the tokens this
        rank saw."""
        self.model.train()
        share = batch[self.context.rank::self.context.world_size]
        if self.config.method == "sft":
            loss_sum, tokens = self._sft_gradients(share, sum(example.num_targets for example in batch))
        else:
            loss_sum, tokens = self._preference_gradients(share, batch)
        self.context.sum_gradients(self.params)
        self.context.sum_(loss_sum)
        self._step_optimizer()
        return float(loss_sum), tokens

    def _sft_gradients(self, share: list[ds.Example], global_targets: int) -> tuple[torch.Tensor, int]:
        config = self.config
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for micro in ds.micro_batches(share, config.micro_batch_size, self.tokenizer.pad_token_id, config.packing,
                                      config.cutoff_len, config.group_by_length):
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
                losses, _ = token_losses(self.model, micro)
            (losses.float().sum() / global_targets).backward()
            loss_sum += losses.detach().double().sum().cpu() / global_targets
            tokens += micro.num_tokens
        return loss_sum, tokens

    def _preference_gradients(self, share: list[ds.Pair], batch: list[ds.Pair]) -> tuple[torch.Tensor, int]:
        """DPO or ORPO gradients of this rank's pairs, each loss divided by the global batch's pairs (ORPO's NLL
        by its tokens); the rewards of the step are kept for the log."""
        config = self.config
        learn_prompt = config.method == "orpo" and config.train_on_inputs
        nll_tokens = sum(preference.nll_tokens(pair, learn_prompt) for pair in batch)
        loss_sum, tokens, stats = torch.zeros((), dtype=torch.float64), 0, preference.new_stats()
        for start in range(0, len(share), config.micro_batch_size):
            pairs = share[start:start + config.micro_batch_size]
            loss, chosen, rejected, micro_tokens = self._pair_losses(pairs, learn_prompt, len(batch), nll_tokens)
            loss.backward()
            loss_sum += loss.detach().double().cpu()
            tokens += micro_tokens
            preference.add_stats(stats, pairs, chosen, rejected)
        self.context.sum_(stats)
        self.step_rewards = preference.summarise_stats(stats)
        return loss_sum, tokens

    def _pair_losses(self, pairs: list[ds.Pair], learn_prompt: bool, global_pairs: int,
                     nll_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This micro-batch's share of the step's loss, the pairs' rewards, and its tokens."""
        config = self.config
        micro, slots, starts = preference.pair_batch(pairs, self.tokenizer.pad_token_id, config.packing,
                                                     config.cutoff_len, learn_prompt)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            policy = preference.forward_pairs(self.model, micro, slots, starts, len(pairs))
            if config.method == "dpo":
                with preference.reference_model(self.model, preference.REFERENCE in self.model.peft_config):
                    reference = preference.forward_pairs(self.model, micro, slots, starts, len(pairs))
        if config.method == "dpo":
            losses, chosen, rejected = preference.dpo_losses(policy, reference, config.beta)
            loss = losses.sum() / global_pairs
        else:
            losses, chosen, rejected = preference.orpo_losses(policy, config.beta)
            loss = losses.sum() / global_pairs + policy.nll_sum / nll_tokens
        return loss, chosen, rejected, micro.num_tokens

    def _step_optimizer(self) -> None:
        config = self.config
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Eval loss per language and overall (token-weighted) on the validation split: of the answers (SFT) or
        of the chosen answers (preference methods, so that adapters compare whatever trained them), and for
        DPO / ORPO the validation pairs' rewards."""
        self.model.eval()
        if self.config.method == "sft":
            return self._eval_loss(self.val)
        rewards = preference.new_stats()
        share = self.val[self.context.rank::self.context.world_size]
        for start in range(0, len(share), self.config.micro_batch_size):
            pairs = share[start:start + self.config.micro_batch_size]
            _, chosen, rejected, _ = self._pair_losses(pairs, False, 1, 1)
            preference.add_stats(rewards, pairs, chosen, rejected)
        self.context.sum_(rewards)
        summary = preference.summarise_stats(rewards)
        return {**self._eval_loss([pair.chosen() for pair in self.val]),
                **{f"eval_{key}": value for key, value in summary.items()}}

    def _eval_loss(self, examples: list[ds.Example]) -> dict[str, Any]:
        codes = sorted({example.lang for example in examples})
        sums = torch.zeros(len(codes), 2, dtype=torch.float64)  # [loss sum, target tokens] per language
        share = examples[self.context.rank::self.context.world_size]
        for micro in ds.micro_batches(share, self.config.micro_batch_size, self.tokenizer.pad_token_id,
                                      self.config.packing, self.config.cutoff_len, group_by_length=True):
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
                losses, owners = token_losses(self.model, micro)
            for loss, owner in zip(losses.double().cpu().tolist(), owners.cpu().tolist()):
                row = codes.index(micro.examples[owner].lang)
                sums[row, 0] += loss
                sums[row, 1] += 1
        self.context.sum_(sums)
        per_lang = {code: round(float(sums[i, 0] / sums[i, 1]), 6) for i, code in enumerate(codes) if sums[i, 1]}
        overall = float(sums[:, 0].sum() / sums[:, 1].sum())
        return {"eval_loss": round(overall, 6), "eval_loss_per_lang": per_lang}

    # -- logging and checkpoints -------------------------------------------------------------------------
    def _after_step(self, loss: float, rate: float) -> None:
        config, step = self.config, self.state.step
        if not math.isfinite(loss):
            self._diverged(f"the loss of step {step} is {loss}")
        entry = {"step": step, "train_loss": round(loss, 6), "learning_rate": self.scheduler.get_last_lr()[0],
                 "tokens_per_second": round(rate, 1), **self.step_rewards}
        self.state.log_history.append(entry)
        if config.logging_steps > 0 and step % config.logging_steps == 0:
            self._log(entry)
        if self.val and config.eval_steps > 0 and step % config.eval_steps == 0 and step < self.steps:
            self._log({"step": step, **self.evaluate()})
        if config.save_steps > 0 and step % config.save_steps == 0 and step < self.steps:
            self.save_checkpoint()

    def _diverged(self, what: str) -> None:
        """Stop before a non-finite step is logged, checkpointed or saved as an adapter."""
        good = sorted(list_checkpoints(self.output_dir), key=_checkpoint_step)
        since = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was saved before it"
        raise TrainingError(f"{what}: training diverged, and nothing of it is saved; {since}. Lower "
                            "--learning_rate (or set --max_grad_norm), then rerun (it resumes from that checkpoint).")

    def check_finite(self, where: str) -> None:
        """Every trainable weight finite, or a TrainingError naming `where`."""
        bad = [name for name, param in self.model.named_parameters()
               if param.requires_grad and not torch.isfinite(param).all()]
        if bad:
            raise TrainingError(f"{where}: {len(bad)} LoRA tensor(s) hold NaN or inf (first: {bad[0]}).")

    def _last(self, key: str) -> float | None:
        values = [entry[key] for entry in self.state.log_history if key in entry]
        return values[-1] if values else None

    def _log(self, entry: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        log.info(json.dumps(entry, ensure_ascii=False))
        if self.writer is not None:
            self._report(entry)

    def _report(self, entry: dict[str, Any]) -> None:
        step = entry.get("step", self.state.step)
        scalars = {key: value for key, value in entry.items() if isinstance(value, float)}
        for lang, value in entry.get("eval_loss_per_lang", {}).items():
            scalars[f"eval_loss/{lang}"] = value
        if self.config.report_to == "tensorboard":
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        else:
            self.writer.log(scalars, step=step)

    def _open_reporting(self) -> None:
        if not self.context.is_main or self.config.report_to == "none":
            return
        if self.config.report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("--report_to tensorboard needs tensorboard: pip install tensorboard") from exc
            self.writer = SummaryWriter(log_dir=str(self.output_dir / "runs"))
        else:
            import wandb

            wandb.init(project=self.config.wandb_project or None, name=self.config.wandb_run_name or None,
                       config=asdict(self.config))
            self.writer = wandb

    def save_checkpoint(self) -> Path:
        """Write checkpoint-STEP atomically: a staging folder renamed into place once complete."""
        final = self.output_dir / f"checkpoint-{self.state.step}"
        staging = self.output_dir / f".checkpoint-{self.state.step}.partial"
        self.context.barrier()
        if self.context.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.context.barrier()
        self.check_finite(f"checkpoint-{self.state.step}, not saved")
        save_torch(rng_state(), staging / f"rng_state_{self.context.rank}.pt")
        self.context.barrier()
        if self.context.is_main:
            with disk_full_named(staging):  # torch and safetensors raise their own errors on a full disk
                self.model.save_pretrained(staging, selected_adapters=["default"])
            save_torch({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       staging / OPTIMIZER_FILE)
            atomic_write_json(staging / STATE_FILE, {**asdict(self.state), "config": asdict(self.config),
                                                     "run": self.identity})
            fsync_tree(staging)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            fsync_dir(self.output_dir)
            self._prune_checkpoints()
        self.context.barrier()
        return final

    def _prune_checkpoints(self) -> None:
        checkpoints = sorted(list_checkpoints(self.output_dir), key=_checkpoint_step)
        for old in checkpoints[: max(0, len(checkpoints) - self.config.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self, spec: str) -> None:
        """Continue from the checkpoint `spec` names; with `auto`, from the newest one that is readable and
        finite, falling back (with a warning) past damaged ones."""
        candidates = checkpoints_to_resume(self.output_dir, spec)
        if not candidates:
            log.info("--resume_from_checkpoint auto: no checkpoint in %s, starting fresh.", self.output_dir)
            return
        for number, folder in enumerate(candidates):
            try:
                return self._resume_from(folder)
            except (ModelError, TrainingError) as exc:  # damaged; another run's checkpoint is a ConfigError
                if number + 1 == len(candidates):
                    raise
                log.warning("%s cannot be resumed (%s): falling back to %s.", folder, exc, candidates[number + 1])

    def _resume_from(self, folder: Path) -> None:
        load_adapter_weights(self.model, folder)
        if not (folder / STATE_FILE).is_file():
            log.warning("%s holds adapter weights but no training state: training starts at step 0 from "
                        "these weights, with a fresh optimizer and schedule.", folder)
            return
        saved = _read_checkpoint_file(folder / STATE_FILE, lambda path: json.loads(path.read_text()))
        differences = identity_differences(saved["run"], self.identity) if saved.get("run") else []
        if differences:
            raise ConfigError(f"--resume_from_checkpoint {folder}: a checkpoint of another run "
                              f"({'; '.join(differences)}); resuming it would not continue this run.")
        self.check_finite(f"--resume_from_checkpoint {folder}: its adapter is damaged, resume from an earlier "
                          "checkpoint or remove this one")
        states = _read_checkpoint_file(folder / OPTIMIZER_FILE, _load_on_cpu)
        self.optimizer.load_state_dict(states["optimizer"])  # to the params' devices: rank N's are not on GPU 0
        if not all(torch.isfinite(value).all() for state in self.optimizer.state.values() for value in state.values()
                   if torch.is_tensor(value)):
            raise TrainingError(f"--resume_from_checkpoint {folder}: its optimizer state holds NaN or inf; resume "
                                "from an earlier checkpoint or remove this one.")
        self.scheduler.load_state_dict(states["scheduler"])
        self.state = TrainState(saved["step"], saved["log_history"])
        rng_file = folder / f"rng_state_{self.context.rank}.pt"
        if rng_file.is_file():
            set_rng_state(_read_checkpoint_file(rng_file, _load_on_cpu))
        log.info("Resumed from %s at step %d of %d.", folder, self.state.step, self.steps)


def save_torch(value: Any, path: Path) -> None:
    """torch.save through the atomic writer (a full disk is a DiskFull naming the file)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_on_cpu(path: Path) -> Any:
    return torch.load(path, weights_only=True, map_location="cpu")


def _read_checkpoint_file(path: Path, read: Any) -> Any:
    """`read(path)`, or a ModelError naming the file when it is cut short or unreadable."""
    try:
        return read(path)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: unreadable ({type(exc).__name__}: {exc}); the checkpoint is damaged.") from None


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return [path for path in output_dir.glob("checkpoint-*") if path.is_dir() and path.name[11:].isdigit()]


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def checkpoints_to_resume(output_dir: Path, spec: str) -> list[Path]:
    """`auto`: this folder's checkpoints, newest first; else the one folder named."""
    if spec == "auto":
        return sorted(list_checkpoints(output_dir), key=_checkpoint_step, reverse=True)
    folder = Path(spec)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"--resume_from_checkpoint {spec}: no {ADAPTER_WEIGHTS} there.")
    return [folder]


def load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_adapter_tensors(folder / ADAPTER_WEIGHTS))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ModelError(f"{folder}: adapter does not fit this model (unexpected keys: {unexpected[:3]}).")


def tokenized_rows(config: FinetuneConfig, tokenizer: Any, template: PromptTemplate,
                   context: DistributedContext) -> token_cache.TokenizedRows:
    """The run's data sources, tokenized (from the cache when there), with what was left out said."""
    settings = tokenize.Settings(template, config.cutoff_len, config.train_on_inputs, config.method != "sft")
    cache_dir = Path(config.cache_dir) if config.cache_dir else bactrian_home() / "tokenized"
    num_proc = config.num_proc if config.num_proc > 0 else len(os.sched_getaffinity(0))
    data = sources(config.data_path, languages.parse_langs(config.lang) or None)
    rows = token_cache.open_rows(data, tokenizer, settings, cache_dir, num_proc, context)
    summary = rows.summary()
    if summary["left_out"] and context.is_main:
        log.warning("Left out %s (first: %s). Raise --cutoff_len to keep rows whose prompt fills it.",
                    ", ".join(f"{count} row(s) with {why}" for why, count in summary["left_out"].items()),
                    ", ".join(summary["first_left_out"]))
    return rows


def prepare_examples(config: FinetuneConfig, tokenizer: Any, template: PromptTemplate,
                     context: DistributedContext | None = None) -> tuple[token_cache.ExampleSet, list[ds.Example]]:
    """The training rows (an index into the token cache) and the validation examples (held in memory)."""
    rows = tokenized_rows(config, tokenizer, template, context or DistributedContext())
    wanted = rows.rows_in(languages.parse_langs(config.lang))
    if not len(wanted):
        raise DataError(f"No instruction records to train on in {config.data_path} (rows with an empty output or "
                        "no target token within --cutoff_len are left out); check the data and --cutoff_len.")
    train, val = ds.stratified_split(rows.lang_codes[wanted], config.val_set_size)
    return token_cache.ExampleSet(rows, wanted[train]), rows.take(wanted[val])


@holds_output("output_dir", "finetune")
def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train a LoRA adapter into config.output_dir (one per language with --per_language); returns metrics."""
    if config.per_language:
        return finetune_per_language(config)
    context = DistributedContext.from_env()
    validate(config, context.world_size)
    template = load_template(config.prompt_template_name)  # an unknown template fails before the model loads
    loaded = load_model(config.base_model, config.load_8bit, config.load_4bit, device=context.device())
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
    context.close()
    return metrics


def save_adapter(trainer: Trainer, loaded: LoadedModel, template: PromptTemplate, train: token_cache.ExampleSet,
                 val: list[ds.Example], metrics: dict[str, Any]) -> None:
    config, output_dir = trainer.config, trainer.output_dir
    staging = output_dir / ".adapter.partial"
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


def finetune_per_language(config: FinetuneConfig) -> dict[str, Any]:
    """One adapter per language into OUTPUT_DIR/<lang>/. Finished languages (with a manifest) are skipped and
    an interrupted one resumes from its last checkpoint, so rerunning the same command continues the set."""
    if config.resume_from_checkpoint not in (None, "auto"):
        raise ConfigError("--per_language resumes each language from its own checkpoints (auto); a single "
                          f"--resume_from_checkpoint {config.resume_from_checkpoint} cannot serve every language.")
    langs = languages.parse_langs(config.lang) or _languages_in_data(config)
    root = Path(config.output_dir)
    results: dict[str, Any] = {}
    for lang in langs:
        folder = root / lang
        one = dataclasses.replace(config, lang=[lang], output_dir=str(folder), per_language=False,
                                  resume_from_checkpoint=config.resume_from_checkpoint or "auto")
        finished = _finished_run(folder, run_identity(one))
        if finished is not None:
            log.info("%s: already trained, skipped (same settings and data).", folder)
            results[lang] = finished
            continue
        results[lang] = finetune(one)
    if DistributedContext.from_env().is_main:
        atomic_write_json(root / "summary.json", {"languages": results})
    return {"languages": results}


def _languages_in_data(config: FinetuneConfig) -> list[str]:
    """Every language of the data, read from the token cache (built now if need be, for all the runs to share)."""
    tokenizer = load_tokenizer(resolve(config.base_model).path)
    template = load_template(config.prompt_template_name)
    return tokenized_rows(config, tokenizer, template, DistributedContext.from_env()).languages()


def _finished_run(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the adapter in `folder` if it was trained by this very run; a folder left by another run
    (other settings or data) is cleared, saying what differs, so the language is trained again."""
    manifest = read_manifest(folder)
    if manifest is not None and "run" not in manifest:
        log.info("%s: trained by an earlier bactrian that recorded no run identity; kept as it is.", folder)
        return manifest["metrics"]
    checkpoints = list_checkpoints(folder)
    saved = (manifest or {}).get("run") or (_saved_identity(max(checkpoints, key=_checkpoint_step))
                                            if checkpoints else None)
    if saved is None:
        return None
    differences = identity_differences(saved, identity)
    if differences:
        log.warning("%s: trained by another run (%s); training it again.", folder, "; ".join(differences))
        shutil.rmtree(folder)
        return None
    return manifest["metrics"] if manifest else None


def summary_table(results: dict[str, Any]) -> str:
    lines = [f"{'lang':<6} {'eval loss':>10} {'at start':>10} {'train loss':>11} {'steps':>6}"]
    for lang, metrics in results.items():
        lines.append(f"{lang:<6} {_number(metrics.get('eval_loss')):>10} "
                     f"{_number(metrics.get('eval_loss_at_start')):>10} "
                     f"{_number(metrics.get('train_loss')):>11} {metrics.get('steps', '-'):>6}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
