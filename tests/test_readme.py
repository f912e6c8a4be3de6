"""Every python and bash code block of the README runs as written.

Python blocks run each in a fresh interpreter (as a user pastes one into a
file); bash blocks run line by line in a scratch folder that holds the
repository's ``luts/``. The Quick-start install commands are CI's own
(``tests/test_packaging.py`` checks they agree with ``.ci/run``) and
``text`` blocks are not commands.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not README.exists(), reason="needs the source tree"),
]


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in ``language``."""
    text = README.read_text() if README.exists() else ""
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.M | re.S):
        found.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return found


def _commands() -> list[tuple[int, str]]:
    """The bash blocks' lines, without the Quick-start install commands."""
    out = []
    for line, text in blocks("bash"):
        for i, command in enumerate(text.splitlines()):
            if command.strip() and not command.startswith("python3 -m venv"):
                out.append((line + 1 + i, command))
    return out


def test_readme_has_blocks():
    assert len(blocks("python")) >= 6 and len(_commands()) >= 8
    fences = re.findall(r"^```(\w*)$", README.read_text(), re.M)
    languages = set(fences[0::2])  # opening fences
    assert languages <= {"python", "bash", "text"}, languages


def _env():
    env = dict(os.environ)
    env.pop("APPROXJAX_NOTEBOOK_SMALL", None)
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.mark.parametrize(
    "line,code", blocks("python"), ids=lambda v: str(v) if isinstance(v, int) else ""
)
def test_python_block_runs(line, code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, env=_env(), timeout=900)  # fmt: skip
    assert proc.returncode == 0, f"README.md line {line}:\n{proc.stderr[-3000:]}"


def test_bash_blocks_run(tmp_path):
    (tmp_path / "luts").symlink_to(ROOT / "luts")
    exe = Path(sys.executable).parent / "approxjax"
    for line, command in _commands():
        assert command.startswith("approxjax "), f"README.md line {line}: {command}"
        argv = ["bash", "-c", f"{exe} {command[len('approxjax ') :]}"]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=_env(),
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, f"README.md line {line}: {command}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "formats" / "results.json").exists()
    assert (tmp_path / "int8-sweep" / "pareto_power_mW.png").exists()
