"""Options of the verbs that load the engine (chat, generate, serve). Kept free of heavy imports so that
`bactrian --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import ModelOptions, option


@dataclass
class EngineConfig(ModelOptions):
    lora_weights: list[str] = option([], "An adapter folder, as name=path or a bare path (named after its "
                                         "folder). Repeatable.", repeat=True)
    adapters_dir: str = option("", "Load every adapter folder below this folder, named by folder.")
    prompt_template_name: str = option("bactrian", "Template for adapters without a bactrian.json (and the base).")
    dtype: str = option("auto", "Weights' dtype for inference: auto (bf16 on a GPU or CPU that runs it fast, "
                                "i.e. AVX512-BF16 or AMX; else float32), float32, bfloat16 or float16.")
    prepacked_weights: bool = option(True, "fp32 on an x86 CPU: multiply by weights reordered once for oneDNN "
                                           "(weight prepacking; same products; a decode step of Gemma 3 270M at 16 "
                                           "rows 1.85x faster on 2 cores; a second copy of the linear weights in "
                                           "memory).", old_names=("packed_weights",))
    quantization: str = option("auto", "Weights for decoding: auto (the model's dtypes, exact; a quantized model is "
                                       "never chosen for you), int8 (on a CPU: the linear layers and the head in "
                                       "int8 per output channel and per token, the down projection and LoRA in full "
                                       "precision) or fp16 (on an x86 CPU: weights in fp16, products in fp32 by "
                                       "fbgemm); docs/inference.md says what each gains and costs.",
                                choices=("auto", "int8", "fp16"))
    speculation: str = option("prompt_lookup", "Exact speed-up of a greedy request decoded alone: prompt_lookup "
                                               "(it guesses its next tokens from where its last ones occurred "
                                               "before in the prompt or answer, and one step checks them all: "
                                               "the answer is plain decoding's, token for token; in fp32 "
                                               "arithmetic only, which --quantization fp16|int8 keep, not in "
                                               "bf16) or off.",
                              choices=("prompt_lookup", "off"))
    kv_cache_gb: float = option(0.0, "Most memory the KV cache of decoding may take, in GB; a request joins the batch "
                                     "when its worst case (prompt + max tokens) still fits, else waits. 0: half of "
                                     "what is free once the model is loaded (GPU memory, or the host's).")
    language_guard: bool = option(False, "Keep answers in the prompt's language while they are decoded: a line or "
                                         "sentence that drifts into another language is taken back and decoded again "
                                         "with the drift discouraged (docs/language-guard.md). Off by default.")
    guard_retries: int = option(2, "Language guard: re-decodes of one drifting line or sentence before it is kept "
                                   "and marked.")
    auto_fallback: str = option("multilingual", "Who answers `auto` requests in a language no adapter covers: "
                                                "multilingual (the broadest multilingual adapter) or base.")


@dataclass
class GenerateConfig(EngineConfig):
    input_file: str = option("", "Instructions to answer: JSON, JSONL or Parquet with instruction, input, "
                                 "optional lang and id.")
    output_file: str = option("", "JSONL to write (appended to and resumed if it exists).")
    adapter: list[str] = option([], "Which model answers: base, an adapter name, auto, or a comma list "
                                    "(each row is answered by each). Default: auto when adapters are loaded.")
    decode_batch_size: int = option(8, "Rows decoded at once; a finished row's place goes to the next at once.",
                                    old_names=("batch_size",))
    temperature: float = option(0.0, "Sampling temperature (0: greedy).")
    top_p: float = option(1.0, "Nucleus sampling probability.")
    top_k: int = option(0, "Top-k sampling (0: off).")
    num_beams: int = option(1, "Beam search width (1: off).")
    max_new_tokens: int = option(128, "Most tokens generated per answer.")
    stop: list[str] = option([], "Stop strings, repeatable.", repeat=True)
    seed: int = option(42, "Seed; each row gets seed + row number, so results do not depend on batching.")


@dataclass
class ServeConfig(EngineConfig):
    host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
    port: int = option(8000, "Port to listen on.")
    api_key: str = option("", "Require 'Authorization: Bearer KEY' on every path but /health (default: no key). "
                              "A flag's value is visible to every user of the machine in `ps`: prefer "
                              "$BACTRIAN_API_KEY or --api_key_file.")
    api_key_file: str = option("", "A file whose first line is the API key (instead of --api_key).")
    max_batch: int = option(64, "Most requests decoded together (continuous batching: a request joins the "
                                "running batch at the next step).")
    batch_wait_ms: float = option(5.0, "When the server is idle, how long a request waits for company.")
    max_queue: int = option(256, "Most requests waiting behind a full batch; more are refused with 429 and "
                                 "Retry-After.")
    max_tokens_limit: int = option(1024, "Most tokens generated per request; also the budget of a request that "
                                          "names none (then capped by the room left in the context).")
    max_request_bytes: int = option(2 * 1024 * 1024, "Largest request body accepted (413 beyond).")
    upstream: str = option("", "Forward generation to this OpenAI-compatible server (e.g. http://gpu-host:8000/v1: "
                               "vLLM --enable-lora, llama.cpp's server) that serves the same adapters by name; "
                               "this server keeps auto routing, templates, the API key and the bounds.")
    upstream_api_key: str = option("", "API key of the upstream server (also $BACTRIAN_UPSTREAM_API_KEY).")
    upstream_base_name: str = option("base", "The upstream's name for the base model (requests for `base`).")
    guard_pairs_file: str = option("", "Append every answer the language guard corrected to this JSONL file as a "
                                       "preference pair (the corrected answer chosen, its drift rejected), ready for "
                                       "`finetune --method dpo|orpo`. Safe to share between servers.")


@dataclass
class ChatConfig(EngineConfig):
    server_name: str = option("127.0.0.1", "Address to bind (0.0.0.0 to reach it from other machines).")
    server_port: int = option(7860, "Port to listen on.")
    share_gradio: bool = option(False, "Ask Gradio for a public share link.")
