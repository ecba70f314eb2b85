"""The README's two commands are what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = ROOT / "README.md"
    lines = [l.split("#")[0].strip() for l in readme.read_text().splitlines()[:6] if "pip install" in l]
    assert len(lines) == 2 and lines[0].endswith("genbench run") and "pytest" in lines[1]
    ci = (ROOT / ".ci" / "run").read_text()
    setup, test = lines[1].split(" && ")
    assert setup in ci and test in ci
    assert lines[0].split(" && ")[0] == setup
