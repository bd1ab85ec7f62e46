"""Options of the verbs that load the engine (chat, generate, serve). Kept free of heavy imports so that
`bactrian --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..train.config import option


@dataclass
class EngineConfig:
    base_model: str = option("default", "Base model: 'default' (embedded Gemma 3 270M), a hub id, a local "
                                        "folder or a .gguf file.")
    lora_weights: list[str] = option([], "An adapter folder, as name=path or a bare path (named after its "
                                         "folder). Repeatable.", repeat=True)
    adapters_dir: str = option("", "Load every adapter folder below this folder, named by folder.")
    prompt_template_name: str = option("bactrian", "Template for adapters without a bactrian.json (and the base).")
    load_8bit: bool = option(False, "Load the base model in 8-bit (bitsandbytes, CUDA only).")
    load_4bit: bool = option(False, "Load the base model in 4-bit NF4 (bitsandbytes, CUDA only).")
    dtype: str = option("auto", "Weights' dtype for inference: auto (bf16 on a GPU or CPU that runs it fast, "
                                "i.e. AVX512-BF16 or AMX; else float32), float32, bfloat16 or float16.")
    auto_fallback: str = option("multilingual", "Who answers `auto` requests in a language no adapter covers: "
                                                "multilingual (the broadest multilingual adapter) or base.")


@dataclass
class GenerateConfig(EngineConfig):
    input_file: str = option("", "Instructions to answer: JSON, JSONL or Parquet with instruction, input, "
                                 "optional lang and id.")
    output_file: str = option("", "JSONL to write (appended to and resumed if it exists).")
    adapter: list[str] = option([], "Which model answers: base, an adapter name, auto, or a comma list "
                                    "(each row is answered by each). Default: auto when adapters are loaded.")
    batch_size: int = option(8, "Rows decoded together.")
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
    api_key: str = option("", "Require 'Authorization: Bearer KEY' on /v1/ (default: no key). Also read from "
                              "$BACTRIAN_API_KEY.")
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


@dataclass
class ChatConfig(EngineConfig):
    server_name: str = option("127.0.0.1", "Address to bind (0.0.0.0 to reach it from other machines).")
    server_port: int = option(7860, "Port to listen on.")
    share_gradio: bool = option(False, "Ask Gradio for a public share link.")


@dataclass
class EvalConfig(EngineConfig):
    tasks: list[str] = option(["xcopa"], "Tasks, comma separated: xcopa, xstorycloze, xwinograd, sib200, or a "
                                         ".jsonl/.yaml file of {context, choices, label} items.")
    data_dir: str = option("", "Folder with the tasks' files as published (xcopa/val.LANG.jsonl, sib-200/CODE/"
                               "dev.tsv, ...); without it, tasks load from the hub.")
    langs: list[str] = option([], "Languages to evaluate (default: all the task has).")
    output_dir: str = option("./eval-report", "Where results.json, report.md and the charts go.")
    batch_size: int = option(16, "Packed rows (of 128 tokens) scored per forward pass.")
    limit: int = option(0, "Evaluate only the first N items per language (0: all).")


@dataclass
class JudgeConfig(EngineConfig):
    questions_dir: str = option("", "Folder of questions in the Vicuna-80 format (questions_<Language>.jsonl with "
                                    "question_id, text, category), e.g. ../shared/data/chat-eval/vicuna-80.")
    langs: list[str] = option([], "Languages to judge (default: every questions file).")
    questions_per_lang: int = option(16, "Questions per language (the paper used 16).")
    model_a: str = option("base", "First model: base or an adapter name.")
    model_b: str = option("", "Second model: base or an adapter name.")
    max_new_tokens: int = option(256, "Answer length.")
    judge_base_url: str = option("", "OpenAI-compatible endpoint of the judge, e.g. https://api.openai.com/v1.")
    judge_model: str = option("gpt-4", "The judge model's name at that endpoint.")
    judge_api_key: str = option("", "API key of the judge (default: $OPENAI_API_KEY).")
    judge_max_tokens: int = option(512, "Most tokens of each verdict.")
    concurrency: int = option(16, "Judge requests in flight.")
    requests_per_minute: int = option(0, "Judge requests per minute (0: no limit).")
    tokens_per_minute: int = option(0, "Judge tokens per minute, estimated (0: no limit).")
    price_input_per_1m: float = option(0.0, "Price of 1M prompt tokens, for the cost report.")
    price_output_per_1m: float = option(0.0, "Price of 1M completion tokens, for the cost report.")
    output_dir: str = option("./judge-report", "Where answers, verdicts, the request cache and the report go.")
