"""The Python examples of the README and docs/batch.md, run as written against the real servicers in this
process (``WORKERS``) in a folder holding the images they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import batch
from tests.support.images import jpeg
from tests.support.inprocess import in_process_worker

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- example: tests/test_docs_examples.py runs this block -->"


def _examples(doc: str) -> list[str]:
    return re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/batch.md"])
def test_the_python_examples_run(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    examples = _examples(doc)
    assert examples, f"{doc} has no example marked to run"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / name).write_bytes(jpeg(64, 48))
    with in_process_worker() as w:
        for code in examples:
            exec(compile(code, doc, "exec"), {"WORKERS": [w.address]})  # noqa: S102 - our own documentation
    assert "ok" in capsys.readouterr().out
    assert (batch.read_results(tmp_path / "results" / "photos")["status"] == "ok").all()
