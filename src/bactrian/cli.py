"""The `bactrian` command. Each verb parses a typed config (defaults < --config YAML < flags) and calls one
library function; only this module prints errors and chooses exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sqlite3
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
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
        choices = spec.metadata.get("choices")
        if choices and spec.metadata.get("old_values"):
            help_text += f" (one of {', '.join(choices)})"
            choices = None  # the old values are accepted too, with a warning, by options.typed_value
        _add_flag(parser, flags, spec.name, kind, help_text, choices)
        for old in spec.metadata.get("old_names", ()):
            _add_flag(parser, [f"--{old}"], old, kind, argparse.SUPPRESS, choices)


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
@dataclass(frozen=True)
class Command:
    """A verb: its config class and function as "module:name" (imported only when used: configs are light, the
    functions load torch), and how its result is printed."""

    name: str  # "eval judge"
    help: str
    config: str | None
    function: str
    show: Callable[[Any, Any], None]


def _finetune_summary(config: Any, metrics: Any) -> None:
    if not _is_main_process():
        return
    if not config.per_language:
        print(f"Adapter saved to {config.output_dir}")
        print(f"Final metrics: {metrics}")
        return
    from .train.per_language import summary_table

    print(summary_table(metrics["languages"]))
    print(f"Adapters saved to {config.output_dir}/<lang>/; summary in {config.output_dir}/summary.json")


def _eval_report(config: Any, results: Any) -> None:
    from .eval.report import markdown

    print(markdown(results))
    print(f"Reports in {config.output_dir} (results.json, report.md, one PNG chart per task)")


def _judge_report(config: Any, report: Any) -> None:
    from .eval.judge import markdown

    print(markdown(report))
    print(f"Report in {config.output_dir} (judge.json, judge.md; answers.jsonl and the request cache resume a rerun)")


def _as_json(_: Any, result: Any) -> None:
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


def _nothing(*_: Any) -> None:
    pass


COMMANDS = (
    Command("finetune", "Train a LoRA adapter on instruction data (the original finetune.py, fixed and faster).",
            "bactrian.train.config:FinetuneConfig", "bactrian.train.finetune:finetune", _finetune_summary),
    Command("demo", "Fine-tune the embedded default model on the bundled multilingual set and compare answers.",
            "bactrian.config:DemoConfig", "bactrian.demo:demo", lambda _, text: print(text)),
    Command("chat", "A Gradio app to talk to a model and its adapters (the original generate.py).",
            "bactrian.infer.config:ChatConfig", "bactrian.infer.chat:chat", _nothing),
    Command("generate", "Answer every instruction of a file, in batches, resumable.",
            "bactrian.infer.config:GenerateConfig", "bactrian.infer.generate:generate",
            lambda config, written: print(f"Wrote {written} rows to {config.output_file}")),
    Command("serve", "An OpenAI-compatible HTTP server over a base model and many adapters.",
            "bactrian.infer.config:ServeConfig", "bactrian.infer.server:serve", _nothing),
    Command("export", "Merge an adapter and write a Hugging Face folder, a Meta state_dict or GGUF for llama.cpp.",
            "bactrian.export.config:ExportConfig", "bactrian.export.run:export",
            lambda _, written: print(f"Wrote {written}")),
    Command("eval", "Zero-shot evaluation per language, base and adapters side by side: multiple choice (XCOPA, "
                    "XStoryCloze, XWinograd, SIB-200, Belebele, your own) and generated answers (language "
                    "confusion, MGSM, translation, QA).",
            "bactrian.eval.config:EvalConfig", "bactrian.eval.run:evaluate", _eval_report),
    Command("eval judge", "Two models answer multilingual questions; a judge on any OpenAI-compatible endpoint "
                          "scores them pairwise, both orders.",
            "bactrian.eval.config:JudgeConfig", "bactrian.eval.judge:judge", _judge_report),
    Command("data translate", "Translate instruction data into other languages.",
            "bactrian.data.config:TranslateConfig", "bactrian.data.translate:translate", _as_json),
    Command("data generate", "A teacher answers every row in the row's language.",
            "bactrian.data.config:DataGenerateConfig", "bactrian.data.generate:generate", _as_json),
    Command("data filter", "Drop or flag wrong-language, empty, truncated, refused, duplicate and out-of-bounds "
                           "rows; write a report.", "bactrian.data.config:FilterConfig",
            "bactrian.data.filters:filter", _as_json),
    Command("data build", "(--config recipe.yaml) Translate, generate and filter, then write the dataset (Parquet "
                          "per language and a dataset card).", None, "bactrian.data.build:build", _as_json),
    Command("data prefs", "Preference pairs per language for finetune --method dpo|orpo: the teacher's answer "
                          "chosen, the model's own rejected when in another language, echoing, cut off, or judged "
                          "worse.", "bactrian.data.config:PrefsConfig", "bactrian.data.prefs:prefs", _as_json),
    Command("data stats", "Rows and mean tokens per language, and a chart.", "bactrian.data.config:StatsConfig",
            "bactrian.data.stats:stats", _as_json),
    Command("languages", "List the 52 Bactrian-X languages and their codes.", None, "bactrian.cli:print_languages",
            _nothing),
)


def load(reference: str) -> Any:
    """The object a "module:name" reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def print_languages() -> None:
    from .languages import LANGUAGES

    print(f"{'code':<5} {'name':<12} {'locale':<7} {'script':<6} flores")
    for lang in LANGUAGES:
        print(f"{lang.code:<5} {lang.name:<12} {lang.locale:<7} {lang.script:<6} {lang.flores}")


def options_page() -> str:
    """docs/options.md: every verb's options with their help text and default, from the configs themselves (a test
    keeps the page in sync: regenerate it with `python -c "from bactrian.cli import options_page;
    print(options_page(), end='')" > docs/options.md`)."""
    lines = ["# Options", "", "Generated from the configs' help text (`bactrian VERB --help` says the same). Every "
             "option is also a key of a `--config` YAML file. Seed names are the original Bactrian-X flags; old "
             "names still work, with a warning.", ""]
    for command in (command for command in COMMANDS if command.config):
        config_cls = load(command.config)
        lines += [f"## bactrian {command.name}", "", command.help, "", "| option | default | what it does |",
                  "| --- | --- | --- |"]
        for spec in dataclasses.fields(config_cls):
            default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            names = ", ".join(f"`--{name}`" for name in (spec.name, *spec.metadata.get("seed_names", ())))
            old = spec.metadata.get("old_names", ())
            help_text = spec.metadata.get("help", "").replace("|", "\\|")
            if old:
                help_text += f" (formerly {', '.join(f'`--{name}`' for name in old)})"
            lines.append(f"| {names} | `{_show(default)}` | {help_text} |")
        lines.append("")
    return "\n".join(lines)


def run(command: Command, args: argparse.Namespace) -> None:
    """Build the verb's config from the YAML file and the flags, call its function, show what it returns."""
    function = load(command.function)
    if command.config is not None:
        config = build_config(load(command.config), args)
        command.show(config, function(config))
    elif command.name == "data build":
        command.show(None, function(args.config))
    else:
        function()


def _is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun / accelerate launch, which stay quiet."""
    return os.environ.get("RANK", "0") == "0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bactrian", description="Multilingual instruction tuning, "
                                     "the Bactrian-X way: data, LoRA fine-tuning, inference, export, evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name.replace(" ", "-"), help=command.help, description=command.help,
                                    prog=f"bactrian {command.name}")
        if command.config is not None:
            add_config_arguments(sub, load(command.config))
        elif command.name == "data build":
            sub.add_argument("--config", required=True, help="The recipe (YAML).")
        sub.set_defaults(command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in {command.name for command in COMMANDS}:
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]  # `bactrian eval judge`, `bactrian data build`, ...
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if _is_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise (httpx2: the openai client's own)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(args.command, args)
    except BactrianError as exc:
        print(f"bactrian {args.command.name}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.OperationalError) as exc:  # a library's own write on a full disk
        if not out_of_space(exc):
            raise
        where = getattr(exc, "filename", None) or "a file"
        print(f"bactrian {args.command.name}: error: no space left on the device (or quota) while writing {where}. "
              "Free some space, then rerun the same command: finished work is kept.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bactrian {args.command.name}: interrupted; finished work is kept (resume with the same command).",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
