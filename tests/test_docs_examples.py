"""The documentation's examples run, and say what they print: every curl example and every Python
block in README.md and docs/*.md, against a live `siamese-serve` over a freshly built demo gallery
(the 3,000 sample images and the bundled model, as `siamese-demo` builds it).

Each example runs from a folder of its own that holds the repository's `models/` and `samples/`
(so that the files it names are the repository's, and what it writes goes nowhere else), with
`http://127.0.0.1:8000` pointing at the test server and the server's write key in
`SIAMESE_API_KEY`, as the docs tell a reader to set it.

- A shell block with `curl` runs whole in bash (`set -e`, curl with `--fail-with-body`), each
  command's output kept apart. The `# {...}` comments after a command show its answer: every key
  they name must be in it, and the values of the keys that say what was found (ids, labels,
  verdicts, the rule) must be the same. Numbers that vary in their last digit with the CPU
  (distances, scores) are checked by key only. Lines that start a server are left out: the test
  server stands in for them.
- A Python block runs in a new interpreter and must exit 0. A `print(...)` line's comment (on the
  line, or on the lines below it) shows what it prints, up to a `:` and a space that starts an
  explanation: its words must be in the output, decimals aside.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, child_env, start_serve

pytestmark = pytest.mark.slow

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_URL = "http://127.0.0.1:8000"
API_KEY = "docs-example-key"
# Keys whose values say what was found; compared exactly.
EXACT_KEYS = {"id", "label", "verified", "in_domain", "same_image", "match", "operating_point",
              "model", "name", "created", "basis"}
PAIR = re.compile(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|true|false|null|-?\d+(?:\.\d+)?(?:e-?\d+)?)')
KEY = re.compile(r'"(\w+)":')
FENCE = re.compile(r"^```(\w*)\s*$")
SERVER_START = re.compile(r"\bsiamese-(demo|serve)\b")
DECIMAL = re.compile(r"\d\.\d")


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, text) of each fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence and lang is None:
            lang, start, lines = fence.group(1), number + 1, []
        elif line.startswith("```") and lang is not None:
            blocks.append((lang, start, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def examples() -> list:
    found = []
    for path in DOCS:
        for lang, line, text in code_blocks(path):
            name = f"{path.relative_to(REPO)}:{line}"
            if lang == "python" or (lang == "sh" and re.search(r"^\s*curl ", text, re.M)):
                found.append(pytest.param(lang, text, id=name))
    return found


def shell_commands(text: str) -> list[tuple[str, str]]:
    """(command, the comment lines after it) of a shell block; a command runs on over lines
    that end in a backslash."""
    commands: list[list[str]] = []  # [command, comments]
    continued = False
    for line in text.splitlines():
        stripped = line.strip()
        if continued:
            commands[-1][0] += "\n" + line
        elif stripped.startswith("#"):
            if commands:
                commands[-1][1] += stripped.lstrip("#") + "\n"
        elif stripped:
            commands.append([line, ""])
        continued = stripped.endswith("\\")
    return [(c, comments) for c, comments in commands if not SERVER_START.search(c)]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """siamese-serve over a new build of the demo gallery, with a write key."""
    folder = tmp_path_factory.mktemp("docs")
    gallery = folder / "demo"
    subprocess.run([sys.executable, "-m", "scripts.demo", "--build-only", "--gallery", str(gallery)],
                   check=True, capture_output=True, env=child_env(), cwd=REPO, timeout=600)
    live = start_serve(gallery, REPO / "models" / "fashion-mnist", folder / "serve.log",
                       workers=1, env={"SIAMESE_API_KEY": API_KEY})
    yield live
    live.stop()


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A reader's folder: the repository's models and samples, nothing else."""
    for name in ("models", "samples"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def run_shell(text: str, server, workdir: Path) -> None:
    commands = shell_commands(text)
    script = ['set -euo pipefail', 'curl() { command curl --fail-with-body -sS "$@"; }']
    for n, (command, _) in enumerate(commands):
        script += [f"printf '\\n@@@ {n} @@@\\n'", command.replace(DOC_URL, server.url)]
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, SIAMESE_API_KEY=API_KEY))
    assert done.returncode == 0, f"the example failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    outputs = re.split(r"\n@@@ (\d+) @@@\n", "\n" + done.stdout)[1:]
    answers = {int(n): out for n, out in zip(outputs[::2], outputs[1::2])}
    for n, (command, comments) in enumerate(commands):
        if "{" not in comments:
            continue
        answer = compact(answers.get(n, ""))
        for key in KEY.findall(comments):
            assert f'"{key}":' in answer, f"{command.strip()}\nanswered without {key!r}:\n{answer}"
        for key, value in PAIR.findall(comments):
            if key in EXACT_KEYS:
                shown = f'"{key}":{json.dumps(json.loads(value))}'
                assert shown in answer, f"{command.strip()}\nsays {shown}, but answered:\n{answer}"


def compact(text: str) -> str:
    """Each JSON answer in `text` written compactly (as the server does), the rest as it is."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False))
        except ValueError:
            out.append(line)
    return "\n".join(out)


def printed_words(text: str) -> list[str]:
    """The words a Python block's comments say its print() calls print."""
    words, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if "print(" not in line.split("#")[0]:
            continue
        shown = [line.split("  # ", 1)[1]] if "  # " in line else []
        for below in lines[i + 1:]:
            if not below.lstrip().startswith("#"):
                break
            shown.append(below.lstrip()[1:])
        for comment in shown:
            comment = comment.split(": ", 1)[0] if not comment.lstrip().startswith("{") else comment
            words += [w.strip(",;") for w in comment.split()
                      if not DECIMAL.search(w) and w.strip(",;")]
    return words


def run_python(text: str, server, workdir: Path) -> None:
    (workdir / "example.py").write_text(text.replace(DOC_URL, server.url))
    done = subprocess.run([sys.executable, "example.py"], cwd=workdir, capture_output=True,
                          text=True, timeout=600, env=child_env(SIAMESE_API_KEY=API_KEY))
    assert done.returncode == 0, f"the example failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for word in printed_words(text):
        assert word in done.stdout, f"the comments say {word!r} is printed; it printed:\n{done.stdout}"


# What an example may leave in a reader's clone: what git ignores (see .gitignore).
LEFT_BEHIND = {"models", "samples", "runs", "galleries", "example.py"}


@pytest.mark.parametrize("lang, text", examples())
def test_example_runs(lang, text, demo_server, workdir):
    if lang == "python":
        run_python(text, demo_server, workdir)
    else:
        run_shell(text, demo_server, workdir)
    # Nothing untracked in the repository after running it (it once left four files).
    assert {p.name for p in workdir.iterdir()} <= LEFT_BEHIND


def test_every_curl_and_python_example_is_found():
    """The finder sees the examples the docs have (a broken fence would hide them silently)."""
    names = [p.id for p in examples()]
    assert sum(n.startswith("README.md") for n in names) >= 4
    assert sum(n.startswith("docs/api.md") for n in names) >= 3
    assert any(n.startswith("docs/deployment.md") for n in names)


def test_every_example_on_the_api_docs_page_runs(demo_server, workdir):
    """/api/docs shows one curl example per operation (the OpenAPI document's `x-example`):
    each runs against a live server, from a reader's folder, and answers 2xx."""
    from webapp.openapi import document
    from webapp.settings import Settings

    spec = document(Settings(gallery=demo_server.gallery))
    commands = [op["x-example"] for path, methods in spec["paths"].items()
                if "{gallery}" not in path for op in methods.values()]
    assert len(commands) == 16 and all(c.startswith("curl ") for c in commands)
    run_shell("\n".join(commands), demo_server, workdir)
    assert (workdir / "runs" / "item-1.png").read_bytes()[:4] == b"\x89PNG"
