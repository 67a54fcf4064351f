"""Lines of src/ at git revisions, counted three ways, so that sizes compare across
formatting changes (issue #12: "lines of src/ do not grow").

    .venv/bin/python tools/src_lines.py 766c203~1 b149001 HEAD
    .venv/bin/python tools/src_lines.py --by-file b149001 HEAD   # where the lines went

* physical: lines of the .py files as committed;
* formatted: the same after `ruff format` with the project's settings (pyproject.toml of
  the working tree) and with `# fmt: skip` markers removed, so that a tree written with
  them and one without count alike;
* code: formatted lines holding code: no blank lines, comments or docstrings.

Each revision is read with `git archive` into a temporary directory; the work tree is not
touched. Code lines are counted here with the standard library's ast and tokenize rather
than cloc (which counts docstrings as comments too), so that this script needs no package
beyond the project's venv (its ruff).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(text: str) -> int:
    """Lines that hold a token other than a comment or a docstring."""
    docs: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docs.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in SKIP_TOKENS:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(lines)


def tree_at(rev: str, into: Path) -> dict[str, tuple[int, int, int]]:
    """{path: (physical, formatted, code)} for src/**/*.py at ``rev``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    files = sorted(into.rglob("*.py"))
    physical = {p: p.read_text().count("\n") for p in files}
    for p in files:
        p.write_text(re.sub(r"[ \t]+# fmt: skip$", "", p.read_text(), flags=re.M))
    ruff = ROOT / ".venv" / "bin" / "ruff"
    subprocess.run([str(ruff), "format", "-q", "--config", str(ROOT / "pyproject.toml"), str(into)], check=True)
    out = {}
    for p in files:
        text = p.read_text()
        out[str(p.relative_to(into))] = (physical[p], text.count("\n"), code_lines(text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="+", help="git revisions")
    ap.add_argument("--by-file", action="store_true", help="growth per file between the first and the last rev")
    args = ap.parse_args()
    trees = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, rev in enumerate(args.revs):
            trees[rev] = tree_at(rev, Path(tmp) / str(i))
    print("| revision | files | physical | formatted | code |")
    print("|---|---|---|---|---|")
    for rev, tree in trees.items():
        sums = [sum(v[k] for v in tree.values()) for k in range(3)]
        print(f"| {rev} | {len(tree)} | {sums[0]} | {sums[1]} | {sums[2]} |")
    if args.by_file:
        a, b = trees[args.revs[0]], trees[args.revs[-1]]
        print(f"\nformatted lines, {args.revs[0]} -> {args.revs[-1]}, largest changes first:")
        rows = [(b.get(p, (0, 0, 0))[1] - a.get(p, (0, 0, 0))[1], p) for p in set(a) | set(b)]
        for delta, path in sorted(rows, key=lambda r: (-abs(r[0]), r[1])):
            if delta:
                print(f"{delta:+6d}  {path}{'  (new)' if path not in a else '  (gone)' if path not in b else ''}")


if __name__ == "__main__":
    sys.exit(main())
