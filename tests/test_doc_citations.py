"""Every document the code cites lives in the repository, and every cited section exists.

A clone of varpo must be able to follow each `docs/….md §N` reference in a docstring or comment;
the project's early design notes lived outside the repository and such citations dangled."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("varpo", "kernels", "launch", "benchmarks", "configs")
SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".md", ".toml"}
CITATION = re.compile(r"(?<![\w/.])((?:docs/)?[\w./-]+\.md)\s+§\s*(\d+)")
OUTSIDE = re.compile(r"(?<![\w.])(\.\./[\w./-]+|DESIGN\.md|/work/[\w./-]+)")


def _sources() -> list[Path]:
    out = []
    for top in SCANNED:
        for p in (ROOT / top).rglob("*"):
            if p.is_file() and p.suffix in SUFFIXES and "results" not in p.relative_to(ROOT).parts \
                    and not any(part.startswith(".venv") for part in p.parts):
                out.append(p)
    return out


def _sections(doc: Path) -> set[str]:
    return set(re.findall(r"^#+\s*§(\d+)\b", doc.read_text(), flags=re.M))


def test_scanned_tree_is_not_empty():
    assert len(_sources()) > 50


def test_no_citation_leaves_the_repository():
    bad = []
    for p in _sources():
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            m = OUTSIDE.search(line)
            if m:
                bad.append(f"{p.relative_to(ROOT)}:{i}: {m.group(1)}")
    assert not bad, "citations of paths outside the repository:\n" + "\n".join(bad)


def test_every_cited_section_exists():
    cited, bad = 0, []
    for p in _sources():
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for doc, sec in CITATION.findall(line):
                cited += 1
                target = ROOT / doc
                if not target.is_file():
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {doc} does not exist")
                elif sec not in _sections(target):
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {doc} has no §{sec}")
    assert cited > 10, f"only {cited} citations found: is the pattern still right?"
    assert not bad, "\n".join(bad)


def test_checker_catches_a_dangling_citation(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("# x\n## §1 one\n")
    assert _sections(doc) == {"1"}
    assert CITATION.findall("see docs/design.md §7 here") == [("docs/design.md", "7")]
    assert OUTSIDE.search("see ../shared/DESIGN.md") is not None
