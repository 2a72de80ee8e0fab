"""pyflakes over the tree: no unused imports or variables, no undefined names (the slips a
review misses, like a name used in a lambda after it was deleted)."""
from __future__ import annotations

from pathlib import Path

from pyflakes.api import check
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["encoder", "indexer", "webapp", "scripts", "benchmarks", "tests"]


class Collected(Reporter):
    def __init__(self):
        self.messages: list[str] = []

    def unexpectedError(self, filename, message):
        self.messages.append(f"{filename}: {message}")

    def syntaxError(self, filename, message, lineno, offset, text):
        self.messages.append(f"{filename}:{lineno}: {message}")

    def flake(self, message):
        self.messages.append(str(message))


def flakes(source: str, name: str) -> list[str]:
    found = Collected()
    check(source, name, found)
    return found.messages


def test_the_tree_has_no_pyflakes_warnings():
    messages = [m for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                for m in flakes(path.read_text(), str(path.relative_to(ROOT)))]
    assert not messages, "\n".join(messages)


def test_pyflakes_sees_what_it_is_here_for():
    messages = flakes("import os\n\ndef f():\n    return g\n", "example.py")
    assert ["imported but unused" in m for m in messages] == [True, False]
    assert "undefined name 'g'" in messages[1]
