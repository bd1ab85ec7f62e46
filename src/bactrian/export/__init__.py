"""`bactrian export`: merge a LoRA adapter into its base and write a Hugging Face folder, a Meta state_dict,
or GGUF for llama.cpp; or write the adapter alone as a GGUF LoRA adapter."""
