"""The options of `bactrian finetune`: the original finetune.py flags, same names and meaning, plus ours."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import ModelOptions, option


@dataclass
class FinetuneConfig(ModelOptions):
    data_path: list[str] = option([], "Instruction data: JSON/JSONL/Parquet file, a folder with one file per "
                                      "language, a datasets save_to_disk folder, or a hub id. Repeatable.",
                                  repeat=True)
    lang: list[str] = option([], "Languages to train on, comma separated ISO codes or 'all' "
                                 "(default: every language in the data).")
    output_dir: str = option("./lora-bactrian", "Where the adapter, checkpoints and manifest go.")
    global_batch_size: int = option(128, "Examples per optimizer step (all processes together).",
                                    seed_names=("batch_size",))
    micro_batch_size: int = option(4, "Examples (or packed rows) per forward pass; gradient accumulation = "
                                      "batch_size / micro_batch_size / world size.")
    num_epochs: float = option(3.0, "Epochs to train (ignored when --max_steps is set).")
    learning_rate: float = option(3e-4, "Peak learning rate (AdamW).")
    cutoff_len: int = option(256, "Maximum tokens per example; longer ones are truncated.")
    val_set_size: int = option(2000, "Validation rows held out, stratified by language (seed 42).")
    lora_r: int = option(8, "LoRA rank.")
    lora_alpha: int = option(16, "LoRA alpha.")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = option(["q_proj", "v_proj"], "Modules to adapt, comma separated.")
    train_on_inputs: bool = option(True, "Also learn the prompt tokens (the original's default). "
                                         "Pass False to learn only the output.")
    group_by_length: bool = option(False, "Sort each global batch by length before cutting micro-batches "
                                          "(less padding, same result).")
    resume_from_checkpoint: str | None = option(None, "A checkpoint folder, or 'auto' for the latest one in "
                                                      "--output_dir.")
    prompt_template_name: str = option("bactrian", "Prompt template: bactrian, alpaca, chat (the tokenizer's "
                                                   "chat template) or a JSON file.")
    max_steps: int = option(-1, "Optimizer steps to train; overrides --num_epochs when > 0.")
    warmup_steps: int = option(100, "Linear warmup steps.")
    logging_steps: int = option(10, "Log the training loss every N steps.")
    eval_steps: int = option(200, "Evaluate on the validation split every N steps (0: only at the end).")
    save_steps: int = option(200, "Save a resumable checkpoint every N steps (0: never).")
    save_total_limit: int = option(2, "Checkpoints to keep (oldest removed first).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).")
    seed: int = option(42, "Seed for LoRA initialisation, dropout and data order.")
    packing: bool = option(False, "Pack several examples per sequence (no attention across examples, positions "
                                  "restart per example).")
    lang_temperature: float = option(1.0, "Sample languages with p ~ n^(1/T); 1 keeps the data's mix.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    report_to: str = option("none", "Where metrics go besides the progress bar: none, tensorboard or wandb.",
                            choices=("none", "tensorboard", "wandb"))
    wandb_project: str = option("", "Weights & Biases project (with --report_to wandb).")
    wandb_run_name: str = option("", "Weights & Biases run name (with --report_to wandb).")
    bf16: str = option("auto", "Train under bf16 autocast (LoRA and the optimizer stay fp32): auto (where the "
                               "dtype rule picks bf16: a CPU with AMX or AVX512-BF16, a GPU of compute capability "
                               "8.0 on, whose base weights are then bf16 too and fp32 matmuls TF32), true, or false "
                               "(fp32 weights and matmuls everywhere).", choices=("auto", "true", "false"))
    num_proc: int = option(0, "Processes that tokenize the data when it is not cached yet (0: one per core).")
    cache_dir: str = option("", "Where tokenized data is cached (default: $BACTRIAN_HOME/tokenized, i.e. "
                                "~/.cache/bactrian/tokenized); put it on shared storage for multi-node runs.")
    method: str = option("sft", "What to learn: sft (the answers), dpo or orpo (preference pairs: prefer the chosen "
                                "answer to the rejected one; records with chosen and rejected).",
                         choices=("sft", "dpo", "orpo"))
    beta: float = option(0.1, "dpo: how far the policy may move from the reference (DPO's beta); orpo: the weight "
                              "of the odds-ratio term (ORPO's lambda).")
    init_adapter: str = option("", "Start from this adapter's weights (e.g. the SFT adapter before dpo; its own "
                                   "LoRA settings apply). With dpo it is also the reference, kept frozen; without "
                                   "it the reference is the base model (adapter switched off).")
    per_language: bool = option(False, "Train one adapter per language of --lang (or of the data) into "
                                       "OUTPUT_DIR/<lang>/; finished languages are skipped on a rerun.")
