"""Options of `bactrian eval` and `bactrian eval judge` (they load the engine, so they extend its options)."""

from __future__ import annotations

from dataclasses import dataclass

from ..endpoints.config import RateOptions
from ..infer.config import EngineConfig
from ..options import option


@dataclass
class EvalConfig(EngineConfig):
    tasks: list[str] = option(["xcopa"], "Tasks, comma separated. Multiple choice (log-likelihood): xcopa, "
                                         "xstorycloze, xwinograd, sib200, belebele, or a .jsonl/.yaml file of "
                                         "{context, choices, label} items. Generated answers: confusion (language "
                                         "confusion), mgsm_direct, mgsm_cot (native chain of thought), ntrex, "
                                         "flores (translation, both ways), xquad, mlqa.")
    data_dir: str = option("", "Folder with the tasks' files as published, found anywhere below it "
                               "(xcopa/val.LANG.jsonl, sib-200/CODE/dev.tsv, mgsm_LANG.tsv, xquad.LANG.json, "
                               "newstest2019-ref.*.txt, questions_LANGUAGE.jsonl, ...); without it, tasks load "
                               "from the hub.")
    lang: list[str] = option([], "Languages to evaluate (default: all the task has).", old_names=("langs",))
    output_dir: str = option("./eval-report", "Where results.json, report.md and the charts go.")
    score_batch_size: int = option(16, "Multiple choice: packed rows (of 128 tokens) scored per forward pass.",
                                   old_names=("batch_size",))
    decode_batch_size: int = option(16, "Generated answers: prompts decoded together.", old_names=("gen_batch_size",))
    max_new_tokens: int = option(0, "Most tokens of a generated answer (0: each task's own: 256 for confusion "
                                    "and MGSM as lm-eval, 192 translation, 32 QA).")
    confusion_prompts: str = option("", "Prompts of the confusion task: a folder of questions_<Language>.jsonl "
                                        "(Vicuna-80 format) or a file of instructions with lang (JSON/JSONL/"
                                        "Parquet). Default: the questions_*.jsonl found under --data_dir.")
    limit: int = option(0, "Evaluate only the first N items per language (translation: per direction; 0: all).")


@dataclass
class JudgeOptions(RateOptions):
    """A judge on an OpenAI-compatible endpoint (`eval judge`, `data prefs`)."""

    judge_base_url: str = option("", "OpenAI-compatible endpoint of the judge, e.g. https://api.openai.com/v1.")
    judge_model: str = option("gpt-4", "The judge model's name at that endpoint.")
    judge_api_key: str = option("", "API key of the judge (default: $OPENAI_API_KEY).")
    judge_max_tokens: int = option(512, "Most tokens of each verdict.")


@dataclass
class JudgeConfig(EngineConfig, JudgeOptions):
    questions_dir: str = option("", "Folder of questions in the Vicuna-80 format (questions_<Language>.jsonl with "
                                    "question_id, text, category), e.g. ../shared/data/chat-eval/vicuna-80.")
    lang: list[str] = option([], "Languages to judge (default: every questions file).", old_names=("langs",))
    questions_per_lang: int = option(16, "Questions per language (the paper used 16).")
    model_a: str = option("base", "First model: base or an adapter name.")
    model_b: str = option("", "Second model: base or an adapter name.")
    max_new_tokens: int = option(256, "Answer length.")
    price_input_per_1m: float = option(0.0, "Price of 1M prompt tokens, for the cost report.")
    price_output_per_1m: float = option(0.0, "Price of 1M completion tokens, for the cost report.")
    output_dir: str = option("./judge-report", "Where answers, verdicts, the request cache and the report go.")
