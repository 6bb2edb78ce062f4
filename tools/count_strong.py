"""Count the test functions that compare against values: a rough, mechanical classifier.

    .venv/bin/python tools/count_strong.py [tests_dir] [-v]      # default: tests/ (and its subfolders)
    git show <rev>:tests/x.py ...: run it on a checkout of <rev> for a "before" figure

A test function is *strong* when its body (or a helper of the same file it calls, one level deep)
holds at least one value comparison:
- `pytest.approx`, `torch.allclose`, `torch.equal`, `torch.testing.assert_close`, `math.isclose`;
- `==` / `!=` / `<` / `>` / `<=` / `>=` against a number, against an arithmetic expression
  (a hand computation such as `2 / 3`), or against a list, tuple, dict or set that holds a number,
  unless it is about a time, an exit code or the held-out history's steps (`VACUOUS`: "it finished").
`--items`: weighted by the collected items (parametrised cases) listed one per line on stdin.
Everything else is *weak* here: membership of keys (`"x" in metrics`), return codes, status
strings, messages (`pytest.raises(match=...)`), "it finished". Error-path tests are legitimately
weak by this measure; the script reports them apart (a `pytest.raises` and no value comparison).
Slow and GPU tests are counted apart (the fast suite is what `make test` runs).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

VALUE_CALLS = {"approx", "allclose", "equal", "assert_close", "isclose"}


def _has_number(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)
               for n in ast.walk(node))


def _value_comparison(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if name in VALUE_CALLS:
                return True
        if (isinstance(n, ast.Compare)
                and not any(isinstance(op, (ast.In, ast.NotIn, ast.Is, ast.IsNot)) for op in n.ops)
                and not _vacuous(n)):
            for side in [n.left, *n.comparators]:
                if isinstance(side, ast.BinOp) or (isinstance(side, (ast.Constant, ast.UnaryOp)) and _has_number(side)):
                    return True
                if isinstance(side, (ast.List, ast.Tuple, ast.Dict, ast.Set)) and _has_number(side):
                    return True
    return False


VACUOUS = ("seconds", "perf_counter", "returncode", "history", "time")


def _vacuous(compare: ast.Compare) -> bool:
    """Not a value check: a time (`seconds < 60`), an exit code, "the run finished" (`sorted(history) == [0, 1]`)."""
    words = [getattr(n, "id", None) or getattr(n, "attr", None) or (n.value if isinstance(n, ast.Constant) else None)
             for n in ast.walk(compare)]
    return any(isinstance(w, str) and w in VACUOUS for w in words)


def _raises(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "raises" for n in ast.walk(node))


def _marks(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        for n in ast.walk(d):
            if isinstance(n, ast.Attribute) and n.attr in ("slow", "gpu"):
                out.add(n.attr)
    return out


def classify(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    module_marks = set()
    for stmt in tree.body:  # pytestmark = pytest.mark.gpu
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in stmt.targets):
            module_marks |= {n.attr for n in ast.walk(stmt.value)
                             if isinstance(n, ast.Attribute) and n.attr in ("slow", "gpu")}
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("test_")}
    helpers.update({n.name: n for n in ast.walk(tree)
                    if isinstance(n, ast.FunctionDef) and not n.name.startswith("test_")})
    for n in ast.walk(tree):  # close = lambda a, b: torch.testing.assert_close(...)
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Lambda):
            helpers.update({t.id: n.value for t in n.targets if isinstance(t, ast.Name)})
    out = []
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]:
        called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        called |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id in helpers}  # helpers passed around
        bodies = [fn] + [helpers[c] for c in called if c in helpers]
        if any(_value_comparison(b) for b in bodies):
            kind = "strong"
        elif _raises(fn):
            kind = "error-path"
        else:
            kind = "weak"
        if _marks(fn) | module_marks:
            kind = "slow/gpu"
        out.append((f"{path.name}::{fn.name}", kind))
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests")
    rows = [row for p in sorted(root.rglob("test_*.py")) for row in classify(p)]
    counts = {k: sum(1 for _, kind in rows if kind == k) for k in ("strong", "error-path", "weak", "slow/gpu")}
    fast = counts["strong"] + counts["error-path"] + counts["weak"]
    if "-v" in sys.argv:
        for name, kind in rows:
            print(f"{kind:10} {name}")
    print(f"fast test functions: {fast}; strong {counts['strong']} ({100 * counts['strong'] / max(1, fast):.0f}%), "
          f"error-path {counts['error-path']}, weak {counts['weak']}; slow/gpu (not counted) {counts['slow/gpu']}")


if __name__ == "__main__":
    main()
