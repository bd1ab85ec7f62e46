"""`bactrian demo`: fine-tune the embedded default on the bundled multilingual set, then show the base
model's answers beside the tuned ones for held-out prompts in several languages."""

from __future__ import annotations

import logging
import textwrap
from importlib.resources import files
from pathlib import Path

from .config import DemoConfig
from .records import Record, load_records, write_jsonl
from .train.config import FinetuneConfig

log = logging.getLogger(__name__)

HELD_OUT_LANGS = ("en", "fr", "es", "de", "zh", "ar")


def demo_data_dir() -> Path:
    return Path(str(files("bactrian").joinpath("demo_data")))


def split_held_out(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """The first record of each HELD_OUT_LANGS language is kept out of training, to compare answers on."""
    held_out = [next(record for record in records if record.lang == lang) for lang in HELD_OUT_LANGS]
    return [record for record in records if record not in held_out], held_out


def demo(config: DemoConfig) -> str:
    """Tune, compare, and return the report the CLI prints (progress goes to the log)."""
    from .train.finetune import finetune

    output_dir = Path(config.output_dir)
    records = load_records([str(demo_data_dir())])
    train, held_out = split_held_out(records)
    train_file = output_dir / "demo_train.jsonl"
    write_jsonl(train_file, train)
    langs = sorted({record.lang for record in records})
    log.info("Demo data: %d examples in %d languages (%s); %d held out for comparison.", len(records), len(langs),
             ", ".join(langs), len(held_out))
    tune = FinetuneConfig(
        base_model=config.base_model, data_path=[str(train_file)], output_dir=str(output_dir / "adapter"),
        global_batch_size=config.global_batch_size, micro_batch_size=config.micro_batch_size,
        max_steps=config.max_steps, learning_rate=config.learning_rate, cutoff_len=256, val_set_size=24,
        lora_r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.05,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        train_on_inputs=False, warmup_steps=2, logging_steps=4, eval_steps=0, save_steps=0, packing=True,
    )
    metrics = finetune(tune)
    trained = (f"\nTrained {metrics['steps']} steps at {metrics['train_tokens_per_second']} tokens/s; held-out eval "
               f"loss {metrics['eval_loss_at_start']:.3f} -> {metrics['eval_loss']:.3f}.\n\n")
    return trained + compare_answers(config, tune.output_dir, held_out) + textwrap.dedent(f"""
        Adapter saved in {tune.output_dir} (PEFT format; load it with peft.PeftModel.from_pretrained).
        Next, try:
          bactrian chat --lora_weights {tune.output_dir}            # talk to it in a browser
          bactrian serve --lora_weights {tune.output_dir}           # OpenAI-compatible API on 127.0.0.1:8000
          bactrian export --lora_weights {tune.output_dir} --output_dir ./demo-gguf --format gguf
          bactrian eval --lora_weights {tune.output_dir} --tasks sib200 --langs fr,de  # data from the hub or --data_dir
          bactrian finetune --base_model default --data_path YOUR_DATA --lang fr,de --output_dir ./my-adapter
        """)


def compare_answers(config: DemoConfig, adapter_dir: str, held_out: list[Record]) -> str:
    """Each held-out prompt answered greedily by the base model and by the tuned adapter, in one batch."""
    from .infer.engine import Engine
    from .infer.requests import Request, SamplingParams
    from .infer.routing import BASE

    engine = Engine(config.base_model, [f"tuned={adapter_dir}"])
    params = SamplingParams(max_new_tokens=config.max_new_tokens)
    requests = [Request(engine.catalog.render(name, record.instruction, record.input), params, name)
                for record in held_out for name in (BASE, "tuned")]
    answers = iter(text for text, _, _ in engine.generate(requests))
    return "".join(f"{f'[{record.lang}] {record.instruction} {record.input}'.strip()}\n"
                   f"  base : {_one_line(next(answers))}\n  tuned: {_one_line(next(answers))}\n"
                   f"  (reference: {_one_line(record.output)})\n\n" for record in held_out)


def _one_line(text: str, width: int = 110) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
