"""The import structure: no cycle between modules (imports inside functions included), and
dependencies pointing one way: `evolution` -> `supernet` -> `picodet_nas` (only the command line,
`picodet_nas.cli`, sees the two upper packages)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("picodet_nas", "supernet", "evolution")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file."""
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_walker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    assert _cycles(_imports(_modules())) == []


def test_dependencies_point_one_way():
    graph = _imports(_modules())
    wrong = []
    for name, deps in graph.items():
        top = name.split(".")[0]
        for dep in deps:
            upper = {"picodet_nas": ("supernet", "evolution"), "supernet": ("evolution",), "evolution": ()}[top]
            if dep.split(".")[0] in upper and not name.startswith("picodet_nas.cli"):
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_the_command_line_imports_the_upper_packages_only_inside_handlers():
    """`picodet_nas.cli` may run `supernet` and `evolution`, but only from inside a function, so that
    importing any module of `picodet_nas` (the command line's included) never loads them."""
    at_module_level = []
    for name, path in _modules().items():
        if not name.startswith("picodet_nas.cli"):
            continue
        for node in ast.parse(path.read_text()).body:  # module-level statements only
            targets = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                       [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            at_module_level += [f"{name}: {t}" for t in targets if t.split(".")[0] in ("supernet", "evolution")]
    assert at_module_level == []


MAX_MODULE_LINES = 350


def test_no_module_is_longer_than_max_module_lines():
    """Small modules whose names explain them: none of the packages' modules passes
    MAX_MODULE_LINES (split a module by concern before it gets there)."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def _readme_layout() -> dict[str, str]:
    """The README's Layout table: top-level path -> its role text."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`").rstrip("/")] = cells[1]
    return rows


def _top_level_folders() -> set[str]:
    """The top-level folders holding a tracked file (git); without git, every folder that is not
    hidden, a build output or a run folder."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return {line.split("/")[0] for line in listed.splitlines() if "/" in line and not line.startswith(".")}
    except (OSError, subprocess.CalledProcessError):
        skip = {"runs", "build", "dist", "__pycache__"}
        return {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")
                and p.name not in skip and not p.name.endswith(".egg-info")}


def test_readme_layout_matches_the_tree():
    """Every top-level folder of code or data is in the README's Layout table, every row names a
    folder that exists, and every file a row names (`x.py`, `cli/config.py`) is in that folder."""
    rows = _readme_layout()
    folders = _top_level_folders()
    assert set(rows) == folders
    missing = []
    for folder, role in rows.items():
        for name in re.findall(r"`([\w/]+\.(?:py|yaml|json))`", role):
            if name.split("/")[0] in folders:
                found = (REPO / name).is_file()
            elif "/" in name:
                found = (REPO / folder / name).is_file()
            else:
                found = any((REPO / folder).rglob(name))
            if not found:
                missing.append(f"{folder}: {name}")
    assert missing == []
