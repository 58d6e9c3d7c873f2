"""The layout holds: layers import only downwards, no package has an import cycle, no didr import
hides inside a function, no source file holds several jobs in over 500 lines, and every citation
points at a file that exists."""

import ast
import os
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

SRC = ROOT / "src" / "didr"
MAX_LINES = 500


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_import_contracts_hold():
    """Layers (pyproject.toml's [tool.importlinter]) and no cycles between sibling modules."""
    lint_imports = pytest.importorskip("importlinter.cli").lint_imports
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert lint_imports(no_cache=True, no_logo=True) == 0, "lint-imports found a broken contract (run it for the details)"
    finally:
        os.chdir(cwd)


def test_no_didr_import_inside_a_function_or_class():
    """An import inside a function is how a layer violation or a cycle hides from the contracts."""
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom):
                        names = [inner.module or ""]
                    elif isinstance(inner, ast.Import):
                        names = [a.name for a in inner.names]
                    else:
                        continue
                    if any(n == "didr" or n.startswith("didr.") for n in names):
                        found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not found, "didr imports inside functions: " + ", ".join(sorted(set(found)))


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"


def test_every_cited_file_exists():
    """Docstrings, comments and reports cite docs/method.md and benchmarks/results/*: those files exist,
    and no bare "method.md" citation points outside the repository."""
    cited = re.compile(r"(?<![\w/])((?:docs|benchmarks/results|configs)/[\w./-]+\.(?:md|yaml|json|png))")
    missing, bare = set(), set()
    for path in [*sources(), *(ROOT / "benchmarks").glob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        missing |= {f"{path.relative_to(ROOT)}: {m}" for m in cited.findall(text) if not (ROOT / m).exists()}
        if path.parent != ROOT / "docs":  # within docs/, method.md is a relative link
            bare |= {str(path.relative_to(ROOT)) for m in re.finditer(r"(?<![/\w])method\.md", text)}
    assert not missing, f"cited files that do not exist: {sorted(missing)}"
    assert not bare, f"'method.md' without docs/: {sorted(bare)}"


def test_every_equation_the_code_cites_is_stated_in_docs_method():
    stated = set(re.findall(r"\| (M\d+) \|", (ROOT / "docs" / "method.md").read_text()))
    cited = {m for p in sources() for m in re.findall(r"\b(M\d{1,2})\b", p.read_text())}
    assert cited and cited <= stated, f"cited but not stated: {sorted(cited - stated)}"
