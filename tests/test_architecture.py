"""The layers of the package (docs/architecture.md), enforced: core <- library <- commands, imports point down
only, no circle, a command never imports another (but the two recipes, which run other verbs by their function),
and the command line's help loads no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bactrian

PACKAGE = Path(bactrian.__file__).parent
CORE = {"bactrian", "bactrian.errors", "bactrian.options", "bactrian.fileio", "bactrian.manifest",
        "bactrian.languages", "bactrian.prompts", "bactrian.charts"}
COMMANDS = {"bactrian.cli", "bactrian.__main__", "bactrian.demo", "bactrian.train.finetune",
            "bactrian.infer.chat", "bactrian.infer.generate", "bactrian.infer.server", "bactrian.export.run",
            "bactrian.eval.run", "bactrian.eval.judge", "bactrian.data.translate", "bactrian.data.generate",
            "bactrian.data.filters", "bactrian.data.build", "bactrian.data.stats", "bactrian.data.prefs"}
RECIPES = {  # verbs made of other verbs, which they call by their public function
    "bactrian.data.build": {"bactrian.data.translate", "bactrian.data.generate", "bactrian.data.filters"},
    "bactrian.demo": {"bactrian.train.finetune"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The bactrian modules `name` imports, at its top or inside a function alike."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                      for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_layers_name_real_modules():
    assert CORE | COMMANDS <= set(MODULES)


def test_the_core_imports_only_the_core():
    upward = {(name, target) for name in CORE for target in GRAPH[name] - CORE}
    assert not upward


def test_the_library_never_imports_a_command():
    library = set(MODULES) - COMMANDS
    assert not {(name, target) for name in library for target in GRAPH[name] & COMMANDS}


def test_a_command_imports_no_other_command_but_a_recipe_its_verbs():
    crossing = {(name, target) for name in COMMANDS - {"bactrian.cli", "bactrian.__main__"}
                for target in GRAPH[name] & COMMANDS if target not in RECIPES.get(name, set())}
    assert not crossing


def test_the_import_graph_has_no_circle():
    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(GRAPH[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(GRAPH[module])
        return seen

    assert not [name for name in MODULES if name in reaches(name)]


NO_TORCH = """
import sys
from bactrian.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
import bactrian.infer.server  # what `serve --upstream` runs: no weights, so no torch either
heavy = sorted(name for name in ("torch", "transformers", "peft") if name in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["serve", "--help"], ["eval", "judge", "--help"],
                                  ["data", "prefs", "--help"], ["demo", "--help"]])
def test_help_loads_no_torch(argv):
    done = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
