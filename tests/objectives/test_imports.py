"""objectives/ must stay pure torch (docs/architecture.md §1): no module in it may import Ray.

Checked statically with ``ast`` (every import statement, at any depth) rather
than in a subprocess, so the check costs milliseconds.
"""

import ast
from pathlib import Path

import hbat.objectives

ALLOWED_TOP_LEVEL = {"torch", "math", "dataclasses", "typing", "collections", "__future__", "inspect"}


def test_objectives_import_only_torch_and_stdlib():
    folder = Path(hbat.objectives.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 10
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in ALLOWED_TOP_LEVEL, f"{f.name}:{node.lineno} imports {root!r}"
