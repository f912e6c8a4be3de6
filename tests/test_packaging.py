"""The README's two Quick-start commands, CI and the command line stay in step."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import approxjax as ax

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", section, flags=re.S)


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="needs the source tree")
def test_readme_has_two_commands_and_ci_runs_the_second():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each Quick-start command is one line"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_cli_demo_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "approxjax", "demo", "-m", "7"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "truncated7" in proc.stdout


def test_public_api():
    for name in ax.__all__:
        assert hasattr(ax, name), name
    assert ax.cpu_kernel_variant() in {"Baseline", "Avx2", "Avx512"}
