"""The manual's Python examples run as written (each ```python block of docs/, in a fresh folder)."""

import os
import re

import pytest

from tests import ROOT

DOCS = ROOT / "docs"
BLOCKS = [(page.relative_to(DOCS).as_posix(), i, code) for page in sorted(DOCS.rglob("*.md"))
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


def test_the_manual_has_python_examples():
    assert any(page == "getting-started.md" for page, _, _ in BLOCKS)


@pytest.mark.parametrize("page,index,code", BLOCKS, ids=[f"{page}#{i}" for page, i, _ in BLOCKS])
def test_a_python_example_of_the_manual_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/{page} example {index}", "exec"), {"__name__": "__docs__"})
    assert os.listdir(tmp_path) or "out=" not in code  # an example that writes a build wrote one
