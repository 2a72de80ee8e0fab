"""The repository stands alone: nothing in it reads a folder beside the clone, the datasets its
tests, benchmarks and reproduction commands name are in `datasets/`, and they are the files their
PROVENANCE.md describes. Standard library and pytest only."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "galleries", "datasets",
           "build", "dist"}
TEXT = {".py", ".md", ".toml", ".cfg", ".txt", ".html", ".js", ".css", ".json", ".sh", ""}
DATASET_PATH = re.compile(r"(?<![\w/.])datasets/[\w.*/-]+")


def text_files() -> list[Path]:
    out = []
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if any(p in SKIPPED or p.endswith(".egg-info") for p in parts[:-1]) or not path.is_file():
            continue
        if path.suffix in TEXT and path.stat().st_size < 2_000_000:
            out.append(path)
    return out


def test_nothing_reads_a_folder_beside_the_clone():
    beside = re.compile(r"\.\./shared|shared/datasets|\.parent\s*/\s*[\"']shared[\"']")
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in text_files() for n, line in enumerate(p.read_text(errors="replace")
                                                            .splitlines(), 1)
             if beside.search(line) and p != Path(__file__)]
    assert not found, "\n".join(found)


def test_every_dataset_path_the_repository_names_is_in_it():
    named = {m.group(0).rstrip(".") for p in text_files()
             for m in DATASET_PATH.finditer(p.read_text(errors="replace"))}
    assert any(n.startswith("datasets/fashion-mnist") for n in named)  # the scan sees them
    missing = sorted(n for n in named if not list(REPO.glob(n)))
    assert not missing, f"named but not in the repository: {missing}"


def test_the_datasets_are_the_files_their_provenance_lists():
    """Fashion-MNIST's PROVENANCE.md lists every file's sha256; each must match, and nothing may
    be missing (a truncated copy would train a different model)."""
    folder = REPO / "datasets" / "fashion-mnist"
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)", (folder / "PROVENANCE.md").read_text(), re.M)
    assert len(listed) == 12
    for digest, name in listed:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    for name in ("fashion-mnist", "omniglot", "clothing-small"):
        assert (REPO / "datasets" / name / "PROVENANCE.md").is_file()
        assert (REPO / "datasets" / name / "LICENSE").is_file()
    assert len(list((REPO / "datasets" / "clothing-small" / "train").glob("*/*.jpg"))) == 3068
