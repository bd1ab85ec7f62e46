"""The README and the docs: the commands CI runs, the lowest versions it tests, links that lead somewhere, tests that
exist where a page names them, and a README short enough to read to the end."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = [block.split("```", 1)[0].strip() for block in readme.split("```bash\n")[1:3]]
    demo_command, test_command = blocks
    assert demo_command.endswith("bactrian demo") and "torch==2.13.0" in demo_command
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_the_test_command_builds_llama_cpp_portably():
    readme = (REPO / "README.md").read_text()
    test_command = readme.split("```bash\n")[2].split("```", 1)[0]
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF' in test_command and "--no-cache-dir" in test_command


def test_ci_tests_the_lowest_versions_pyproject_allows():
    """Every lower bound of a runtime dependency is pinned in .ci/lowest.txt, which .ci/run installs to run the core
    tests against: a bound we declare is one the suite has passed with."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for requirement in declared:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        bounds[name.lower().replace("_", "-")] = version
    lines = (REPO / ".ci" / "lowest.txt").read_text().splitlines()
    pinned = dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    assert pinned == {name: version for name, version in bounds.items() if name != "torch"}
    assert "torch==2.13.0" in (REPO / "README.md").read_text() and bounds["torch"] == "2.13"
    assert "-c .ci/lowest.txt" in (REPO / ".ci" / "run").read_text()


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 160


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    outside = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", outside)


def anchors(page: Path) -> set[str]:
    """The #anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M),
                          flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: broken links {broken}"


def test_every_test_the_docs_name_exists():
    named = {match for page in PAGES for match in re.findall(r"tests/((?:\w+/)*\w+\.py)::(\w+)", page.read_text())}
    assert named
    missing = [f"tests/{file}::{test}" for file, test in sorted(named)
               if not (REPO / "tests" / file).is_file()
               or not re.search(rf"^def {test}\(", (REPO / "tests" / file).read_text(), flags=re.M)]
    assert not missing, f"named in the docs but not found: {missing}"


def test_the_options_page_is_what_the_configs_say():
    from bactrian.cli import options_page

    page = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    assert page == options_page(), ("docs/options.md is out of date: regenerate it (CONTRIBUTING.md says how).")


def test_the_architecture_page_names_every_module_and_only_real_ones():
    package = REPO / "src" / "bactrian"
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = {name for name in re.findall(r"`((?:[a-z_0-9]+/)*[a-z_0-9]+\.py)`", page) if not name.startswith("tests/")}
    modules = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    assert modules - named - {module for module in modules if module.endswith("/__init__.py")} == set()
    assert named - modules == set()
