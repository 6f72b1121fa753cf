"""The proofs/ index is consistent with the tests: every named test exists and names its proof file back.

- every ``tests/...py::test_name`` in a proofs/*.md file (README included) must exist (module-level function or
  method of a class) and its docstring or source must mention that proof file's path (``proofs/<file>.md``;
  for README rows, the file of the row);
- every result row of README's index table links an existing proof file, and every proof file has a row;
- every test in tests/proofs/ whose docstring names a proof file is listed in that file (no orphans).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROOFS = ROOT / "proofs"
TEST_REF = re.compile(r"(tests/[\w./-]+\.py)::(\w+)")
ROW_FILE = re.compile(r"\]\(([\w.-]+\.md)\)")
STATUSES = {"proved", "checked numerically", "refuted"}


def proof_files() -> list[Path]:
    return sorted(p for p in PROOFS.glob("*.md") if p.name != "README.md")


@cache
def functions(test_file: str) -> dict[str, str]:
    """Test name -> docstring + source of that function (module level or inside classes)."""
    path = ROOT / test_file
    src = path.read_text()
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = (ast.get_docstring(node) or "") + "\n" + (ast.get_source_segment(src, node) or "")
    return out


def check_ref(test_file: str, name: str, proof: str) -> str | None:
    if not (ROOT / test_file).is_file():
        return f"{test_file} does not exist"
    fns = functions(test_file)
    if name not in fns:
        return f"{test_file}::{name} does not exist"
    if f"proofs/{proof}" not in fns[name]:
        return f"{test_file}::{name} does not mention proofs/{proof}"
    return None


def readme_rows() -> list[list[str]]:
    text = (PROOFS / "README.md").read_text()
    section = text.split("## Index", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[2:]]  # skip header and rule


@pytest.mark.parametrize("proof", [p.name for p in proof_files()])
def test_proof_file_references_exist_and_point_back(proof):
    """proofs/README.md: every test a proof file names exists and names the proof file."""
    refs = TEST_REF.findall((PROOFS / proof).read_text())
    assert refs, f"proofs/{proof} names no test"
    problems = [m for f, n in refs if (m := check_ref(f, n, proof))]
    assert not problems, "\n".join(problems)


def test_readme_table_rows_have_files_tests_and_status():
    """proofs/README.md: each index row links an existing proof file, lists tests that exist and name that file,
    and has a status among proved / checked numerically / refuted; every proof file has a row."""
    rows = readme_rows()
    assert rows
    linked = set()
    problems = []
    for cells in rows:
        assert len(cells) == 5, cells
        m = ROW_FILE.search(cells[1])
        assert m, f"row without a file link: {cells}"
        proof = m.group(1)
        linked.add(proof)
        if not (PROOFS / proof).is_file():
            problems.append(f"row {cells[0]!r}: proofs/{proof} missing")
        refs = TEST_REF.findall(cells[3])
        if not refs:
            problems.append(f"row {cells[0]!r}: no tests")
        problems += [m for f, n in refs if (m := check_ref(f, n, proof))]
        status = {s.strip() for s in cells[4].split(";")}
        if not status or not status <= STATUSES:
            problems.append(f"row {cells[0]!r}: status {cells[4]!r}")
    assert not problems, "\n".join(problems)
    assert {p.name for p in proof_files()} <= linked, "proof files without a README row"


def test_no_orphan_proof_tests():
    """proofs/README.md: every test in tests/proofs/ that names a proof file in its docstring is listed there."""
    listed: dict[str, set[str]] = {}
    for p in proof_files():
        listed[p.name] = {f"{f}::{n}" for f, n in TEST_REF.findall(p.read_text())}
    orphans = []
    for tf in sorted((ROOT / "tests" / "proofs").glob("test_*.py")):
        rel = tf.relative_to(ROOT).as_posix()
        tree = ast.parse(tf.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node) or ""
                for proof in re.findall(r"proofs/([\w.-]+\.md)", doc):
                    if proof != "README.md" and f"{rel}::{node.name}" not in listed.get(proof, set()):
                        orphans.append(f"{rel}::{node.name} names proofs/{proof} but is not listed there")
    assert not orphans, "\n".join(orphans)


def test_index_catches_a_bad_reference(tmp_path):
    """proofs/README.md: the checker itself reports a missing test and a test that does not point back."""
    assert check_ref("tests/proofs/test_index.py", "no_such_test", "t1_ownership.md")
    assert check_ref("tests/proofs/test_index.py", "test_no_orphan_proof_tests", "t1_ownership.md")
    assert check_ref("tests/proofs/test_index.py", "test_no_orphan_proof_tests", "README.md") is None
    assert check_ref("tests/proofs/nope.py", "x", "t1_ownership.md")
