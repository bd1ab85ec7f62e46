from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    import re

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
