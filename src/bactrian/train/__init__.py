"""LoRA fine-tuning, the `bactrian finetune` command (`finetune`): options (`config`), tokenizing and its cache
(`tokenize`, `token_cache`), examples and batches (`dataset`), the losses (`loss`, `preference`) and the
objective of each method (`objectives`), the training loop (`loop`) with its checkpoints (`checkpoints`), run
identity (`run_identity`) and reporting (`reporting`), processes (`distributed`), --per_language runs
(`per_language`) and the model card (`model_card`)."""
