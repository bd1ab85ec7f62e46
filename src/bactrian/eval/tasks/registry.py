"""The one registry of evaluation tasks: name -> task. Each family file of this package registers its tasks when
it is imported; the first lookup imports them all, so a new family file needs no other change."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from ...errors import ConfigError
from .base import GenerativeTask, MultipleChoiceTask, Task
from .task_file import TASK_FILE_SUFFIXES, file_task

_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task under its name (once: two families may not claim one name)."""
    if task.name in _TASKS:
        raise ConfigError(f"Two evaluation tasks are named {task.name!r}.")
    _TASKS[task.name] = task
    return task


@functools.cache
def _import_families() -> None:
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{module.name}")


def get_task(name: str) -> Task:
    """The task of that name, or the multiple-choice items of a task file (.jsonl / .yaml)."""
    _import_families()
    if name in _TASKS:
        return _TASKS[name]
    path = Path(name)
    if path.suffix in TASK_FILE_SUFFIXES and path.is_file():
        return file_task(path)
    multiple_choice = sorted(key for key, task in _TASKS.items() if isinstance(task, MultipleChoiceTask))
    generative = sorted(key for key, task in _TASKS.items() if isinstance(task, GenerativeTask))
    raise ConfigError(f"Unknown task {name!r}: use {', '.join(multiple_choice)}, a generative task "
                      f"({', '.join(generative)}) or a .jsonl/.yaml file.")
