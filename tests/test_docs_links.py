"""The documentation's links resolve, and the README opens with the two set-up commands.

Checks every relative link in README.md, docs/*.md and models/*/README.md: the file it names
exists, and a `#section` names a heading of that file (GitHub's anchors). Standard library and
pytest only, so it runs without the project's dependencies.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SETUP_COMMANDS = [
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/siamese-demo",
    "bash .ci/run",
]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
INLINE_CODE = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "models").glob("*/README.md"))]
    return [f for f in files if f.is_file()]


def prose_lines(text: str, keep_code: bool = False) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed unless `keep_code`
    (headings' anchors include it)."""
    out, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append(line if keep_code else INLINE_CODE.sub("", line))
    return out


def code_blocks(text: str) -> list[list[str]]:
    """The contents of each fenced code block, in order."""
    blocks, current, fence = [], None, None
    for line in text.splitlines():
        if fence is None:
            m = FENCE.match(line)
            if m:
                fence, current = m.group(1)[0] * 3, []
        elif line.strip().startswith(fence):
            blocks.append(current)
            fence, current = None, None
        else:
            current.append(line)
    return blocks


def links(text: str) -> list[str]:
    found = []
    for line in prose_lines(text):
        found += INLINE_LINK.findall(line)
        m = REFERENCE_LINK.match(line)
        if m:
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text, keep_code=True):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` that does not resolve, with why."""
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md":
            if anchor not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    return problems


def test_the_documentation_is_there():
    names = {str(p.relative_to(REPO)) for p in doc_files()}
    assert "README.md" in names
    assert any(n.startswith("docs/") for n in names)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    assert broken_links(path) == []


def first_block_commands(text: str) -> list[str]:
    """The non-blank lines of the first fenced code block, stripped ([] without one)."""
    blocks = code_blocks(text)
    return [line.strip() for line in blocks[0] if line.strip()] if blocks else []


def test_readme_opens_with_the_two_setup_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert first_block_commands(text) == SETUP_COMMANDS


def test_the_checker_finds_broken_links(tmp_path: Path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` section: yes\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n"
        "[fine](other.md) [fine](other.md#a-code-section-yes) [fine](#title)\n"
        "[web](https://example.com/missing.md) `[in code](missing.md)`\n"
        "```\n[in a block](missing-too.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [here](#nothing)\n"
        "[ref]: gone-too.md\n")
    assert broken_links(doc) == [
        "missing.md: no such file " + str(tmp_path / "missing.md"),
        "other.md#nowhere: no heading '#nowhere' in other.md",
        "#nothing: no heading '#nothing' in doc.md",
        "gone-too.md: no such file " + str(tmp_path / "gone-too.md"),
    ]


def test_the_setup_check_reads_only_the_first_block():
    block = "```sh\n" + "\n".join(SETUP_COMMANDS) + "\n```\n"
    assert first_block_commands("# x\n\n" + block) == SETUP_COMMANDS
    assert first_block_commands("# x\n\n```sh\nmake\n```\n" + block) == ["make"]
    extra = "```sh\n" + "\n".join(SETUP_COMMANDS) + "\nmake\n```\n"
    assert first_block_commands(extra) != SETUP_COMMANDS
    assert first_block_commands("no code here") == []
