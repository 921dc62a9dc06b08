"""The documents run: every ```python block of docs/*.md and README.md, file by file, in order,
in one namespace; and every block that quotes the source (```python source=PATH) is found
verbatim in PATH, so a quote cannot drift from the code it shows."""

import re
from pathlib import Path

import pytest
from shared_data import DATA_DIR, NO_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced block: ```info, its lines, the closing ``` at the same indentation (none).
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


class Block:
    def __init__(self, path: Path, match: re.Match):
        self.info = match.group(1).split()
        self.code = match.group(2)
        self.line = path.read_text()[: match.start(2)].count("\n") + 1  # its first line

    @property
    def runs(self) -> bool:
        return self.info == ["python"]

    @property
    def source(self) -> str | None:
        """The quoted file of a ```python source=PATH block."""
        options = dict(word.split("=", 1) for word in self.info[1:] if "=" in word)
        return options.get("source") if self.info[:1] == ["python"] else None


def blocks(path: Path) -> list[Block]:
    return [Block(path, match) for match in FENCE.finditer(path.read_text())]


RUNNABLE = [path for path in DOCUMENTS if any(block.runs for block in blocks(path))]


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda path: path.name)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    if "load_imdb(" in path.read_text():
        if DATA_DIR is None:
            pytest.skip(NO_DATA)
        monkeypatch.setenv("TFDS_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("FLAXLSTM_CACHE_DIR", str(tmp_path / "cache"))  # not the user's cache
    monkeypatch.chdir(tmp_path)  # the pictures and files the documents write land here
    namespace = {"__name__": f"docs:{path.name}"}
    for block in filter(lambda b: b.runs, blocks(path)):
        # Padded with newlines, so that a traceback names the Markdown file's own line.
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        exec(code, namespace)


QUOTES = [
    pytest.param(path, block, id=f"{path.name}:{block.line}")
    for path in DOCUMENTS
    for block in blocks(path)
    if block.source
]


@pytest.mark.parametrize("path,block", QUOTES)
def test_quoted_source_is_verbatim(path, block):
    source = (ROOT / block.source).read_text()
    assert block.code in source, f"{path.name} line {block.line} no longer quotes {block.source}"


def test_every_python_block_runs_or_quotes():
    for path in DOCUMENTS:
        for block in blocks(path):
            if block.info[:1] == ["python"]:
                assert block.runs or block.source, f"{path.name} line {block.line}: {block.info}"


def test_pictures_the_documents_show_exist():
    for path in DOCUMENTS:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text()):
            assert (path.parent / image).is_file(), f"{path.name} shows a missing {image}"
