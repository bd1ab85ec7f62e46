"""Preference tuning on the embedded default (Gemma 3 270M), after SFT on the bundled multilingual set.

    python benchmarks/preference_tuning.py --sft_adapter ./bactrian-demo/adapter   (the adapter `bactrian demo`
        trains on the bundled set)

1. `bactrian data prefs` on the bundled set with the SFT adapter: pairs per language, by kind.
2. DPO from the SFT adapter (--init_adapter; it is also the reference) on those pairs, --dpo_steps steps.
3. Language fidelity before and after: the language-confusion evaluation of SFT and DPO adapters on held-out
   prompts (Vicuna-80, 12 languages, --questions each).
4. Training throughput against TRL's DPOTrainer with the same settings (same pairs, prompts rendered with the
   same template, LoRA of the SFT adapter, batch, micro-batch, cutoff, steps), each in its own process: answer
   tokens per second over the policy's sequences (TRL's `num_tokens`; ours: non-padding tokens), peak RSS.

Prints tables and writes bench-out/preference_tuning.json."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_out import OUT, save

REPO = Path(__file__).resolve().parents[1]
CHAT_EVAL = REPO.parent / "shared" / "data" / "chat-eval"
SETTINGS = dict(global_batch_size=8, micro_batch_size=2, cutoff_len=256, beta=0.1)


def build_pairs(sft: str) -> dict:
    from bactrian.data.prefs import PrefsConfig, markdown, prefs
    from bactrian.demo import demo_data_dir

    started = time.perf_counter()
    report = prefs(PrefsConfig(lora_weights=[f"sft={sft}"], data_path=[str(demo_data_dir())], decode_batch_size=16,
                               max_new_tokens=128, output_dir=str(OUT / "prefs" / "pairs")))
    print(f"\n## pairs ({time.perf_counter() - started:.0f} s)\n\n{markdown(report)}")
    return report


def train_ours(sft: str, pairs: str, steps: int, output: str, learning_rate: float) -> dict:
    from bactrian.train.config import FinetuneConfig
    from bactrian.train.finetune import finetune

    metrics = finetune(FinetuneConfig(base_model="default", data_path=[pairs], output_dir=output, method="dpo",
                                      init_adapter=sft, max_steps=steps, learning_rate=learning_rate,
                                      warmup_steps=0, val_set_size=0, lora_dropout=0.0, logging_steps=1,
                                      save_steps=0, eval_steps=0, bf16="false", **SETTINGS))
    return {"tokens_per_second": metrics["train_tokens_per_second"], "train_loss": metrics["train_loss"]}


def train_trl(sft: str, pairs: str, steps: int, output: str, learning_rate: float) -> dict:
    import torch
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from bactrian.models import load_tokenizer, resolve
    from bactrian.prompts import load_template

    template = load_template("bactrian")
    rows = load_dataset("parquet", data_files=str(Path(pairs) / "*.parquet"), split="train")
    rows = rows.map(lambda row: {"prompt": template.render(row["instruction"], row["input"]),
                                 "chosen": row["chosen"], "rejected": row["rejected"]},
                    remove_columns=rows.column_names)
    path = resolve("default").path
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), sft,
                                      is_trainable=True)
    args = DPOConfig(output_dir=output, beta=SETTINGS["beta"], max_steps=steps, learning_rate=learning_rate,
                     per_device_train_batch_size=SETTINGS["micro_batch_size"],
                     gradient_accumulation_steps=SETTINGS["global_batch_size"] // SETTINGS["micro_batch_size"],
                     max_length=SETTINGS["cutoff_len"], warmup_steps=0, logging_steps=1, save_strategy="no",
                     report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=load_tokenizer(path))
    result = trainer.train()
    tokens = next(entry["num_tokens"] for entry in reversed(trainer.state.log_history) if "num_tokens" in entry)
    return {"tokens_per_second": tokens / result.metrics["train_runtime"], "train_loss": result.training_loss}


def throughput(sft: str, pairs: str, steps: int) -> dict:
    rows = {}
    for way in ("bactrian", "trl"):
        process = subprocess.run([sys.executable, __file__, "--child", way, "--sft_adapter", sft, "--pairs", pairs,
                                  "--throughput_steps", str(steps)], capture_output=True, text=True,
                                 env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        line = next((out for out in process.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{way} failed:\n{process.stderr[-3000:]}")
        rows[way] = json.loads(line[7:])
    print(f"\n## DPO training throughput ({steps} steps, batch {SETTINGS['batch_size']} pairs, micro-batch "
          f"{SETTINGS['micro_batch_size']}, cutoff {SETTINGS['cutoff_len']}, fp32, this CPU)\n")
    print("| way | tokens/s | speed-up | peak RSS (MB) | train loss |\n| --- | ---: | ---: | ---: | ---: |")
    for way, row in rows.items():
        print(f"| {way} | {row['tokens_per_second']:.1f} | "
              f"{row['tokens_per_second'] / rows['trl']['tokens_per_second']:.2f}x | {row['peak_rss_mb']:.0f} | "
              f"{row['train_loss']:.4f} |")
    return rows


def fidelity(sft: str, dpo: str, questions: int) -> dict:
    from bactrian.eval.config import EvalConfig
    from bactrian.eval.run import evaluate

    results = evaluate(EvalConfig(tasks=["confusion"], lora_weights=[f"sft={sft}", f"dpo={dpo}"],
                                  data_dir=str(CHAT_EVAL), limit=questions, max_new_tokens=128, decode_batch_size=16,
                                  output_dir=str(OUT / "prefs" / "fidelity")))["tasks"]["confusion"]
    print(f"\n## Language fidelity on Vicuna-80 ({questions} questions per language), % [95% interval]\n")
    print("| language | " + " | ".join(f"{model} LPR | {model} LCPR" for model in results) + " |")
    print("| --- |" + " ---: |" * (2 * len(results)))
    for lang in next(iter(results.values())):
        cells = []
        for model in results:
            summary = results[model][lang]
            for key in ("line_pass", "lcpr"):
                value, (low, high) = summary[key], summary[f"{key}_ci95"]
                cells.append("-" if value is None else f"{100 * value:.0f} [{100 * low:.0f}, {100 * high:.0f}]")
        print(f"| {lang} | " + " | ".join(cells) + " |")
    for model, per_lang in results.items():
        values = [s["lcpr"] for s in per_lang.values() if s["lcpr"] is not None]
        print(f"mean LCPR {model}: {100 * sum(values) / len(values):.1f}")
    return results


def main(arguments: argparse.Namespace) -> None:
    sft = str(Path(arguments.sft_adapter).resolve())
    report = build_pairs(sft)
    pairs = str(OUT / "prefs" / "pairs")
    dpo = str(OUT / "prefs" / "dpo")
    started = time.perf_counter()
    trained = train_ours(sft, pairs, arguments.dpo_steps, dpo, arguments.learning_rate)
    print(f"\nDPO: {arguments.dpo_steps} steps in {time.perf_counter() - started:.0f} s, final loss "
          f"{trained['train_loss']:.4f}")
    speed = throughput(sft, pairs, arguments.throughput_steps)
    languages = fidelity(sft, dpo, arguments.questions)
    save("preference_tuning", {"pairs": report, "dpo": trained, "throughput": speed, "fidelity": languages,
                               "settings": {**SETTINGS, **vars(arguments)}})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft_adapter", default="./bactrian-demo/adapter")
    parser.add_argument("--dpo_steps", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--throughput_steps", type=int, default=4)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--child", choices=("bactrian", "trl"))
    parser.add_argument("--pairs", default="")
    arguments = parser.parse_args()
    if arguments.child:
        output = str(OUT / "prefs" / f"speed-{arguments.child}")
        train = train_ours if arguments.child == "bactrian" else train_trl
        result = train(arguments.sft_adapter, arguments.pairs, arguments.throughput_steps, output,
                       arguments.learning_rate)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
    else:
        if not CHAT_EVAL.is_dir():
            sys.exit(f"{CHAT_EVAL} is absent: this benchmark needs ../shared/data beside the checkout.")
        main(arguments)
