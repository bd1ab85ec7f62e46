"""The `bactrian` command. Each verb parses a typed config (defaults < --config YAML < flags) and calls one
library function; only this module prints errors and chooses exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sqlite3
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import BactrianError, ConfigError
from .fileio import out_of_space
from .options import base_type, config_of, other_names, parse_bool, read_yaml


def _flag_bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per dataclass field, named as the field (and its seed names: the original Bactrian-X flags);
    defaults stay out of argparse so that we can tell which flags were given (they override the YAML config).
    Old names are hidden flags of their own, so that using one can warn."""
    hints = typing.get_type_hints(config_cls)
    parser.add_argument("--config", help="YAML file whose keys are option names; flags override it.")
    for spec in dataclasses.fields(config_cls):
        kind = base_type(hints[spec.name])
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        help_text = f"{spec.metadata.get('help', '')} (default: {_show(default)})"
        flags = [f"--{name}" for name in (spec.name, *spec.metadata.get("seed_names", ()))]
        _add_flag(parser, flags, spec.name, kind, help_text, spec.metadata.get("choices"))
        for old in spec.metadata.get("old_names", ()):
            _add_flag(parser, [f"--{old}"], old, kind, argparse.SUPPRESS, spec.metadata.get("choices"))


def _add_flag(parser: argparse.ArgumentParser, flags: list[str], dest: str, kind: Any, help_text: str,
              choices: Any) -> None:
    if kind is bool:
        parser.add_argument(*flags, dest=dest, type=_flag_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                            metavar="BOOL", help=help_text)
    elif kind is list:
        parser.add_argument(*flags, dest=dest, action="append", default=argparse.SUPPRESS, metavar="VALUE",
                            help=help_text)
    else:
        parser.add_argument(*flags, dest=dest, type=kind, default=argparse.SUPPRESS, choices=choices, help=help_text)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def build_config(config_cls: type, args: argparse.Namespace) -> Any:
    """Defaults, then the YAML file, then the flags given on the command line, each value checked against its
    option's type."""
    names = {spec.name for spec in dataclasses.fields(config_cls)} | set(other_names(config_cls))
    flags = {key: value for key, value in vars(args).items() if key in names}
    yaml_layer = [(_read_yaml(Path(args.config)), args.config)] if getattr(args, "config", None) else []
    return config_of(config_cls, *yaml_layer, (flags, ""))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found.")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values.")
    return data


# -- verbs -------------------------------------------------------------------------------------------------
def _finetune(args: argparse.Namespace) -> None:
    from .train.config import FinetuneConfig
    from .train.finetune import finetune
    from .train.per_language import summary_table

    config = build_config(FinetuneConfig, args)
    metrics = finetune(config)
    if _is_main_process() and not config.per_language:
        print(f"Adapter saved to {config.output_dir}")
        print(f"Final metrics: {metrics}")
    elif _is_main_process():
        print(summary_table(metrics["languages"]))
        print(f"Adapters saved to {config.output_dir}/<lang>/; summary in {config.output_dir}/summary.json")


def _is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun / accelerate launch, which stay quiet."""
    return os.environ.get("RANK", "0") == "0"


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, demo

    print(demo(build_config(DemoConfig, args)))


def _generate(args: argparse.Namespace) -> None:
    from .infer.config import GenerateConfig
    from .infer.generate import generate

    config = build_config(GenerateConfig, args)
    written = generate(config)
    print(f"Wrote {written} rows to {config.output_file}")


def _serve(args: argparse.Namespace) -> None:
    from .infer.config import ServeConfig
    from .infer.server import serve

    serve(build_config(ServeConfig, args))


def _chat(args: argparse.Namespace) -> None:
    from .infer.chat import chat
    from .infer.config import ChatConfig

    chat(build_config(ChatConfig, args))


def _export(args: argparse.Namespace) -> None:
    from .export.config import ExportConfig
    from .export.run import export

    print(f"Wrote {export(build_config(ExportConfig, args))}")


def _eval(args: argparse.Namespace) -> None:
    from .eval.config import EvalConfig
    from .eval.report import markdown
    from .eval.run import evaluate

    config = build_config(EvalConfig, args)
    print(markdown(evaluate(config)))
    print(f"Reports in {config.output_dir} (results.json, report.md, one PNG chart per task)")


def _judge(args: argparse.Namespace) -> None:
    from .eval.config import JudgeConfig
    from .eval.judge import judge, markdown

    config = build_config(JudgeConfig, args)
    print(markdown(judge(config)))
    print(f"Report in {config.output_dir} (judge.json, judge.md; answers.jsonl and the request cache resume a rerun)")


def _data(name: str):
    """A `bactrian data <name>` verb: build its config, run it, print its summary as JSON."""

    def run(args: argparse.Namespace) -> None:
        import json

        from .data import build, filters, generate, prefs, stats, translate

        verbs = {"translate": (translate.TranslateConfig, translate.translate),
                 "prefs": (prefs.PrefsConfig, prefs.prefs),
                 "generate": (generate.DataGenerateConfig, generate.generate),
                 "filter": (filters.FilterConfig, filters.filter),
                 "stats": (stats.StatsConfig, stats.stats)}
        if name == "build":
            result = build.build(args.config)
        else:
            config_cls, function = verbs[name]
            result = function(build_config(config_cls, args))
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))

    return run


def _languages(args: argparse.Namespace) -> None:
    from .languages import LANGUAGES

    print(f"{'code':<5} {'name':<12} {'locale':<7} {'script':<6} flores")
    for lang in LANGUAGES:
        print(f"{lang.code:<5} {lang.name:<12} {lang.locale:<7} {lang.script:<6} {lang.flores}")


def _verbs() -> list[tuple[str, str, Callable, type | None]]:
    from .data.filters import FilterConfig
    from .data.generate import DataGenerateConfig
    from .data.prefs import PrefsConfig
    from .data.stats import StatsConfig
    from .data.translate import TranslateConfig
    from .demo import DemoConfig
    from .eval.config import EvalConfig, JudgeConfig
    from .export.config import ExportConfig
    from .infer.config import ChatConfig, GenerateConfig, ServeConfig
    from .train.config import FinetuneConfig

    return [
        ("finetune", "Train a LoRA adapter on instruction data (the original finetune.py, fixed and faster).",
         _finetune, FinetuneConfig),
        ("demo", "Fine-tune the embedded default model on the bundled multilingual set and compare answers.",
         _demo, DemoConfig),
        ("chat", "A Gradio app to talk to a model and its adapters (the original generate.py).", _chat,
         ChatConfig),
        ("generate", "Answer every instruction of a file, in batches, resumable.", _generate, GenerateConfig),
        ("serve", "An OpenAI-compatible HTTP server over a base model and many adapters.", _serve, ServeConfig),
        ("export", "Merge an adapter and write a Hugging Face folder, a Meta state_dict or GGUF for llama.cpp.",
         _export, ExportConfig),
        ("eval", "Zero-shot multiple-choice evaluation per language (XCOPA, XStoryCloze, XWinograd, SIB-200, your "
                 "own), base and adapters side by side.", _eval, EvalConfig),
        ("eval-judge", "(bactrian eval judge) Two models answer multilingual questions; a judge on any "
                       "OpenAI-compatible endpoint scores them pairwise, both orders.", _judge, JudgeConfig),
        ("data-translate", "(bactrian data translate) Translate instruction data into other languages.",
         _data("translate"), TranslateConfig),
        ("data-generate", "(bactrian data generate) A teacher answers every row in the row's language.",
         _data("generate"), DataGenerateConfig),
        ("data-filter", "(bactrian data filter) Drop or flag wrong-language, empty, truncated, refused, duplicate "
                        "and out-of-bounds rows; write a report.", _data("filter"), FilterConfig),
        ("data-build", "(bactrian data build --config recipe.yaml) Translate, generate and filter, then write the "
                       "dataset (Parquet per language and a dataset card).", _data("build"), None),
        ("data-prefs", "(bactrian data prefs) Preference pairs per language for finetune --method dpo|orpo: the "
                       "teacher's answer chosen, the model's own rejected when in the wrong language, echoing, cut "
                       "off, or judged worse.", _data("prefs"), PrefsConfig),
        ("data-stats", "(bactrian data stats) Rows and mean tokens per language, and a chart.", _data("stats"),
         StatsConfig),
        ("languages", "List the 52 Bactrian-X languages and their codes.", _languages, None),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bactrian", description="Multilingual instruction tuning, "
                                     "the Bactrian-X way: data, LoRA fine-tuning, inference, export, evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, help_text, func, config_cls in _verbs():
        prog = f"bactrian {name.replace('-', ' ')}"
        sub = subparsers.add_parser(name, help=help_text, description=help_text, prog=prog)
        if config_cls is not None:
            add_config_arguments(sub, config_cls)
        elif name == "data-build":
            sub.add_argument("--config", required=True, help="The recipe (YAML).")
        sub.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in {name for name, *_ in _verbs()}:
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]  # `bactrian eval judge`, `bactrian data build`, ...
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if _is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise (httpx2: the openai client's own)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except BactrianError as exc:
        print(f"bactrian {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.OperationalError) as exc:  # a library's own write on a full disk
        if not out_of_space(exc):
            raise
        where = getattr(exc, "filename", None) or "a file"
        print(f"bactrian {args.verb}: error: no space left on the device (or quota) while writing {where}. Free "
              "some space, then rerun the same command: finished work is kept.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bactrian {args.verb}: interrupted; finished work is kept (resume with the same command).",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
