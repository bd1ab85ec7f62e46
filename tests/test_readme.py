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
