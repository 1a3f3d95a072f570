"""The README's Layout table agrees with the tree, and the import rules it states hold."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "finetune", "launch", "tubelet")


def _layout_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^\| `([^`]+)`[^|]*\| (.*) \|$", section, re.M)]


def test_every_path_in_the_layout_exists():
    rows = _layout_rows()
    assert len(rows) > 10
    missing = []
    for head, what in rows:
        base = ROOT / head
        assert base.exists(), f"Layout names {head}, which does not exist"
        folder = base if base.is_dir() else base.parent
        for name in re.findall(r"`([\w/]+\.py|[\w]+/)`", what):
            cands = [folder / name, ROOT / name, folder / "finetune" / name]
            if not any(c.exists() for c in cands):
                missing.append(f"{head}: {name}")
    assert not missing, missing


def test_every_module_is_in_the_layout():
    text = " ".join(f"{h} {w}" for h, w in _layout_rows())
    unnamed = []
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name in ("__init__.py", "__main__.py") or "configs" in f.parts:
                continue
            rel = f.relative_to(ROOT).as_posix()
            if f.name not in text and rel not in text and f"{f.parent.relative_to(ROOT).as_posix()}/" not in text:
                unnamed.append(rel)
    assert not unnamed, f"modules the Layout does not mention: {unnamed}"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def test_layering_and_no_import_cycles():
    mods = _modules()
    graph = {m: {i for i in _imports(f) if i in mods and i != m} for m, f in mods.items()}
    bad = [f"{m} -> {i}" for m, deps in graph.items() for i in deps
           if (m.startswith("pretrain") and i.startswith("finetune"))
           or (not m.startswith("launch") and i.startswith("launch"))]
    assert not bad, f"layering broken: {bad}"
    # no cycle among modules (package __init__ faces that only re-export are modules too)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(d):] + [d])}")
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
