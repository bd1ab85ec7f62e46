"""LoRA fine-tuning: data preparation (`dataset`) and the training loop (`trainer`)."""
