"""Options of the `bactrian data` verbs (translate, generate, filter, stats, prefs), kept free of heavy imports so
that `bactrian --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..endpoints.config import RateOptions
from ..eval.config import JudgeOptions
from ..infer.config import EngineConfig
from ..options import option


@dataclass
class EndpointOptions(RateOptions):
    model: str = option("", "Model name at the endpoint.")
    base_url: str = option("", "The endpoint: OpenAI-compatible for llm/openai engines (OpenAI, vLLM, llama.cpp's "
                               "server, Ollama, bactrian serve); for google / deepl, their API root (defaults).")
    api_key: str = option("", "API key (default: $OPENAI_API_KEY, $GOOGLE_API_KEY or $DEEPL_AUTH_KEY by engine).")
    price_per_1m_tokens: float = option(0.0, "Price of 1M tokens (of 1M characters for google / deepl), for "
                                             "--dry_run and the final report.")
    dry_run: bool = option(False, "Print what the job would send and cost, send nothing.")
    batch_file: str = option("", "Instead of sending, write the requests not answered yet in the OpenAI Batch API "
                                 "format (also read by vLLM's run-batch) to this file.")
    batch_results: str = option("", "Read a Batch API results file first; its answers are used like cached ones.")
    output_dir: str = option("", "Where the per-language JSONL files, the request cache and the report go.")


@dataclass
class TranslateConfig(EndpointOptions):
    input: str = option("", "English rows: a JSON/JSONL/Parquet file or a folder of them.")
    lang: list[str] = option(["all"], "Target languages, comma separated, or all.", old_names=("langs",))
    engine: str = option("llm", "llm (any OpenAI-compatible chat model), google (Cloud Translation v2, API key), "
                                "deepl, or hf (a local NLLB-200 / M2M100 / mBART-50 model named by --model).",
                         choices=("llm", "google", "deepl", "hf"))
    decode_batch_size: int = option(16, "Segments translated together by --engine hf.", old_names=("batch_size",))
    translate_output: bool = option(False, "Translate the output too (the paper regenerated it instead).")
    code_instructions: str = option("keep", "Programming instructions: keep them in English, or skip them.",
                                    choices=("keep", "skip"))
    max_new_tokens: int = option(1024, "Most tokens per LLM translation.", old_names=("max_tokens",))


@dataclass
class DataGenerateConfig(EndpointOptions):
    input: str = option("", "Rows to answer (instruction, input, lang): a file or a folder of per-language files.")
    engine: str = option("openai", "Teacher engine: openai (any OpenAI-compatible endpoint) or hf (a local "
                                   "model named by --model, in batches).", choices=("openai", "hf"))
    decode_batch_size: int = option(8, "Rows answered together by --engine hf.", old_names=("batch_size",))
    max_new_tokens: int = option(1024, "Most tokens per answer; answers cut there are marked finish_reason=length.",
                                 old_names=("max_tokens",))


@dataclass
class FilterConfig:
    input: str = option("", "Rows with outputs: a file or a folder of per-language files.")
    output_dir: str = option("", "Where the filtered rows and filter_report.{json,md} go.")
    drop: bool = option(True, "Drop failing rows (False: keep them, with a filter_reasons field).")
    min_chars: int = option(1, "Shortest acceptable output, in characters.")
    max_chars: int = option(20000, "Longest acceptable output, in characters.")
    near_duplicate_threshold: float = option(0.9, "MinHash Jaccard similarity above which rows are near duplicates "
                                                  "(0 to 0.96).")
    num_proc: int = option(0, "Processes for the per-row checks (language ID, MinHash); 0: one per core.")


@dataclass
class StatsConfig:
    input: str = option("", "A dataset: a file or a folder of per-language files.")
    tokenizer: str = option("default", "Whose tokens to count: a model spec as for --base_model.")
    output_dir: str = option("./data-stats", "Where stats.json, stats.md and stats.png go.")


@dataclass
class PrefsConfig(EngineConfig, JudgeOptions):
    """With --judge_base_url, the answers no rule rejects are judged against the teacher's in both orders; the
    lower-scored in both becomes the rejected one."""

    data_path: list[str] = option([], "Instruction data with the teacher's answers (any format finetune reads). "
                                      "Repeatable; optional with --guard_pairs.", repeat=True)
    guard_pairs: list[str] = option([], "A pairs file of `serve --guard_pairs_file` (the language guard's corrected "
                                        "answer chosen, its drifting attempt rejected): its pairs in --lang join the "
                                        "output as kind language_guard, each once. Without --data_path no model is "
                                        "loaded. Repeatable.", repeat=True)
    lang: list[str] = option([], "Languages to build pairs for (default: every language in the data).")
    output_dir: str = option("./prefs", "Where <lang>.parquet and report.md go (a dataset finetune reads as it is); "
                                        "the answers, judge cache and report.json go to its work/ folder.")
    adapter: str = option("", "Which model answers: base or an adapter name (default: the one adapter loaded, "
                              "else base).")
    rows_per_lang: int = option(0, "Answer only the first N rows of each language (0: all).")
    decode_batch_size: int = option(16, "Rows decoded together.", old_names=("batch_size",))
    max_new_tokens: int = option(256, "The model's token budget; an answer that reaches it is cut off.")
