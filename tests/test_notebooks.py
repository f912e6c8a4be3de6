"""The example notebooks execute (at small sizes) and are committed with outputs."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.skipif(not NOTEBOOKS.is_dir(), reason="needs the source tree")


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOKS / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDER = _builder() if NOTEBOOKS.is_dir() else None


@pytest.mark.parametrize("name", sorted(BUILDER.NOTEBOOKS) if BUILDER else [])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("APPROXJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setattr(BUILDER, "HERE", tmp_path)
    nb = BUILDER.build(name, BUILDER.NOTEBOOKS[name])
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    sources = [c.source for c in committed.cells]
    assert sources == [c.source for c in nb.cells], "notebook out of date: rerun build_notebooks.py"
    assert any(c.get("outputs") for c in committed.cells if c.cell_type == "code")
