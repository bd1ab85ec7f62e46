"""The training loop, readable top to bottom: `Trainer` runs the optimizer steps of a finetune run over the
global batch schedule, evaluates, logs, checkpoints and resumes.

The loss of a step is the sum of the losses of every target token (or pair) in the global batch divided by
their count, whatever the micro-batching, packing or number of processes (the objective divides; the loop
sums). Checkpoints hold the adapter, optimizer, scheduler, RNG states and the step; the data order is a function
of (seed, epoch), so a resumed run continues exactly where the interrupted one stopped."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError, TrainingError
from . import checkpoints, token_cache
from . import dataset as ds
from .config import FinetuneConfig
from .distributed import DistributedContext
from .objectives import objective_for
from .reporting import Reporter
from .run_identity import identity_differences, run_identity

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)


def total_steps(config: FinetuneConfig, num_examples: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_epochs * math.ceil(num_examples / config.global_batch_size)))


class Trainer:
    def __init__(self, config: FinetuneConfig, context: DistributedContext, model: Any, tokenizer: Any,
                 train: token_cache.ExampleSet, val: list[ds.Example] | list[ds.Pair]):
        from transformers import get_linear_schedule_with_warmup

        self.config, self.context, self.model = config, context, model
        self.train, self.val = train, val
        self.output_dir = Path(config.output_dir)
        self.steps = total_steps(config, len(train))
        self.params = [param for param in model.parameters() if param.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=0.0)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, config.warmup_steps, self.steps)
        self.objective = objective_for(config, context, model, tokenizer.pad_token_id)
        self.reporter = Reporter(config, self.output_dir, context.is_main)
        self.identity = run_identity(config)
        self.state = TrainState()

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        self.reporter.open()
        # the schedule is a function of (seed, epoch): from a resumed step it yields what the whole run would have
        schedule = ds.global_batches(self.train.lang_codes, config.global_batch_size, config.lang_temperature,
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
        self.reporter.close()
        return metrics

    def train_step(self, batch: list[ds.Example] | list[ds.Pair]) -> tuple[float, int]:
        """One optimizer step on one global batch; returns its loss (SFT: the mean token loss) and the tokens this
        rank saw."""
        self.model.train()
        share = batch[self.context.rank::self.context.world_size]  # every rank sees the batch, trains its share
        loss_sum, tokens = self.objective.gradients(share, batch)
        # each share's loss is already divided by the global batch's count: sums over ranks are the step's
        self.context.sum_gradients(self.params)
        self.context.sum_(loss_sum)
        self._step_optimizer()
        return float(loss_sum), tokens

    def _step_optimizer(self) -> None:
        config = self.config
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)  # on the summed (global) gradient
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Eval loss per language and overall (token-weighted) on the validation split: of the answers (SFT) or
        of the chosen answers (preference methods, so that adapters compare whatever trained them), and for
        DPO / ORPO the validation pairs' rewards."""
        self.model.eval()
        return self.objective.evaluate(self.val)

    # -- logging and checkpoints -------------------------------------------------------------------------
    def _after_step(self, loss: float, rate: float) -> None:
        config, step = self.config, self.state.step
        if not math.isfinite(loss):
            self._diverged(f"the loss of step {step} is {loss}")
        entry = {"step": step, "train_loss": round(loss, 6), "learning_rate": self.scheduler.get_last_lr()[0],
                 "tokens_per_second": round(rate, 1), **self.objective.step_log}
        self.state.log_history.append(entry)
        if config.logging_steps > 0 and step % config.logging_steps == 0:
            self._log(entry)
        if self.val and config.eval_steps > 0 and step % config.eval_steps == 0 and step < self.steps:
            self._log({"step": step, **self.evaluate()})
        if config.save_steps > 0 and step % config.save_steps == 0 and step < self.steps:
            self.save_checkpoint()

    def _diverged(self, what: str) -> None:
        """Stop before a non-finite step is logged, checkpointed or saved as an adapter."""
        good = checkpoints.list_checkpoints(self.output_dir)
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
        self.reporter.log(entry, self.state.step)

    def save_checkpoint(self) -> Path:
        """Write checkpoint-STEP atomically: a staging folder (each rank's RNG state, then the main process's
        files) renamed into place once complete."""
        step, context = self.state.step, self.context
        final, staging = checkpoints.checkpoint_paths(self.output_dir, step)
        context.barrier()
        if context.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        context.barrier()
        self.check_finite(f"checkpoint-{step}, not saved")
        checkpoints.save_rng_state(staging, context.rank)
        context.barrier()
        if context.is_main:
            optimizer_states = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            state = {**asdict(self.state), "config": asdict(self.config), "run": self.identity}
            checkpoints.publish_checkpoint(staging, final, self.model, optimizer_states, state)
            checkpoints.prune_checkpoints(self.output_dir, self.config.save_total_limit)
        context.barrier()
        return final

    def resume(self, spec: str) -> None:
        """Continue from the checkpoint `spec` names; with `auto`, from the newest one that is readable and
        finite, falling back (with a warning) past damaged ones."""
        candidates = checkpoints.checkpoints_to_resume(self.output_dir, spec)
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
        checkpoints.load_adapter_weights(self.model, folder)
        saved = checkpoints.read_trainer_state(folder)
        if saved is None:
            log.warning("%s holds adapter weights but no training state: training starts at step 0 from "
                        "these weights, with a fresh optimizer and schedule.", folder)
            return
        differences = identity_differences(saved["run"], self.identity) if saved.get("run") else []
        if differences:
            raise ConfigError(f"--resume_from_checkpoint {folder}: a checkpoint of another run "
                              f"({'; '.join(differences)}); resuming it would not continue this run.")
        self.check_finite(f"--resume_from_checkpoint {folder}: its adapter is damaged, resume from an earlier "
                          "checkpoint or remove this one")
        states = checkpoints.read_optimizer_states(folder)
        self.optimizer.load_state_dict(states["optimizer"])  # to the params' devices: rank N's are not on GPU 0
        if not all(torch.isfinite(value).all() for state in self.optimizer.state.values() for value in state.values()
                   if torch.is_tensor(value)):
            raise TrainingError(f"--resume_from_checkpoint {folder}: its optimizer state holds NaN or inf; resume "
                                "from an earlier checkpoint or remove this one.")
        self.scheduler.load_state_dict(states["scheduler"])
        self.state = TrainState(saved["step"], saved["log_history"])
        checkpoints.restore_rng_state(folder, self.context.rank)
        log.info("Resumed from %s at step %d of %d.", folder, self.state.step, self.steps)
