"""Where a run's log entries go: the log (one JSON line each) and, with --report_to, TensorBoard (under
OUTPUT_DIR/runs) or Weights & Biases; only the main process reports."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import FinetuneConfig

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, config: FinetuneConfig, output_dir: Path, is_main: bool):
        self.config, self.output_dir, self.is_main = config, output_dir, is_main
        self.writer: Any = None  # a TensorBoard SummaryWriter or the wandb module, once opened

    def open(self) -> None:
        if not self.is_main or self.config.report_to == "none":
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

    def log(self, entry: dict[str, Any], step: int) -> None:
        """Log `entry`; its float values (and per-language eval losses) are charted at its step, else `step`."""
        if not self.is_main:
            return
        log.info(json.dumps(entry, ensure_ascii=False))
        if self.writer is not None:
            self._chart(entry, entry.get("step", step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _chart(self, entry: dict[str, Any], step: int) -> None:
        scalars = {key: value for key, value in entry.items() if isinstance(value, float)}
        for lang, value in entry.get("eval_loss_per_lang", {}).items():
            scalars[f"eval_loss/{lang}"] = value
        if self.config.report_to == "tensorboard":
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        else:
            self.writer.log(scalars, step=step)
