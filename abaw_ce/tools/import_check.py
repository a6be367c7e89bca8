"""The kit's layer rule, checked on the source: ``python -m abaw_ce.tools.import_check [--graph]``.

Imports run one way, from the lowest layer up::

    core -> data -> models -> train -> tracks -> submission -> experiments -> cli

A module may import from its own layer or a lower one. Beyond that order the check forbids:

- an import of an ``abaw_ce`` module placed inside a function, outside the cli layer (such imports hide cycles;
  the cli imports a subcommand's modules only when it is chosen, so ``--help`` does not wait for torch);
- a cycle among modules, inside a layer too;
- importing a private name (``_name``) from another package.

Exit status 0 when the tree keeps the rule; 1 with one line per breach (file:line, what, why).
``--graph`` prints the layers and the imports between them as a Mermaid diagram (ARCHITECTURE.md holds it).
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "abaw_ce"

# Layer name -> module prefixes; a module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("abaw_ce", "abaw_ce.errors", "abaw_ce.files", "abaw_ce.labels", "abaw_ce.fusion",
              "abaw_ce.challenge_file")),
    ("data", ("abaw_ce.data", "abaw_ce.video", "abaw_ce.audio", "abaw_ce.faces", "abaw_ce.synth")),
    ("models", ("abaw_ce.models",)),
    ("train", ("abaw_ce.train",)),
    ("tracks", ("abaw_ce.pretrain", "abaw_ce.finetune", "abaw_ce.cexprnet", "abaw_ce.multitask")),
    ("submission", ("abaw_ce.submission",)),
    ("experiments", ("abaw_ce.experiments",)),
    ("cli", ("abaw_ce.cli", "abaw_ce.faces.__main__", "abaw_ce.tools")),
)
LAYER_NAMES = tuple(name for name, _ in LAYERS)
LAZY_IMPORTS_ALLOWED = ("cli",)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool
    private_names: tuple[str, ...] = ()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    if best is None:
        raise ValueError(f"{module} is outside the {PACKAGE} package")
    return best


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, modules: set[str]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def collect_imports(root: Path) -> tuple[set[str], list[Import]]:
    """Every import of a package module by a package module under ``root`` (the package folder)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    found: list[Import] = []
    for importer, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        target = _targets(alias.name, modules)
                        if target:
                            found.append(Import(importer, target, path, child.lineno, in_function))
                elif isinstance(child, ast.ImportFrom):
                    base = _resolve(child, importer, is_package)
                    for alias in child.names:
                        submodule = _targets(f"{base}.{alias.name}", modules)
                        if submodule and submodule == f"{base}.{alias.name}":
                            found.append(Import(importer, submodule, path, child.lineno, in_function))
                            continue
                        target = _targets(base, modules)
                        if target:
                            private = (alias.name,) if alias.name.startswith("_") else ()
                            found.append(Import(importer, target, path, child.lineno, in_function, private))
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, nested)

        visit(tree, False)
    return modules, found


def _package(module: str) -> str:
    return module.rpartition(".")[0] or module


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
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
                    found.append(sorted(component))
    return found


def check(root: Path) -> list[str]:
    """One line per breach of the layer rule in the package at ``root``."""
    modules, imports = collect_imports(root)
    problems = []
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.imported == imp.importer:
            continue
        where = f"{imp.path}:{imp.line}"
        low, high = layer_of(imp.importer), layer_of(imp.imported)
        # A package's __init__ is imported before any of its modules; it does not make them import upwards.
        if not imp.importer.startswith(imp.imported + "."):
            edges[imp.importer].add(imp.imported)
        if LAYER_NAMES.index(high) > LAYER_NAMES.index(low):
            problems.append(f"{where}: {imp.importer} ({low}) imports {imp.imported} ({high}): imports must run "
                            f"{' -> '.join(LAYER_NAMES)}")
        if imp.in_function and low not in LAZY_IMPORTS_ALLOWED:
            problems.append(f"{where}: {imp.importer} imports {imp.imported} inside a function; import it at "
                            f"the top of the module (a function-level import hides cycles)")
        for name in imp.private_names:
            if _package(imp.importer) != _package(imp.imported):
                problems.append(f"{where}: {imp.importer} imports the private name {name} from {imp.imported}; "
                                f"make it public API of its module or keep it inside its package")
    for component in _cycles(edges):
        problems.append(f"{root}: import cycle among {', '.join(component)}")
    return list(dict.fromkeys(problems))  # one line per breach, however many names an import statement has


def layer_graph(root: Path) -> str:
    """The layers, their modules' packages, and which layer imports which, as a Mermaid flowchart."""
    modules, imports = collect_imports(root)
    members: dict[str, set[str]] = defaultdict(set)
    for module in modules - {PACKAGE}:
        layer, top = layer_of(module), ".".join(module.split(".")[:2])
        # A module outside its package's layer (faces.__main__) is named in full.
        members[layer].add((top if layer_of(top) == layer else module).removeprefix(PACKAGE + "."))
    uses: set[tuple[str, str]] = set()
    for imp in imports:
        a, b = layer_of(imp.importer), layer_of(imp.imported)
        if a != b:
            uses.add((a, b))
    lines = ["```mermaid", "flowchart BT"]
    for name in LAYER_NAMES:
        listed = ", ".join(sorted(members[name]))
        lines.append(f'    {name}["<b>{name}</b><br/>{listed}"]')
    for a, b in sorted(uses, key=lambda e: (LAYER_NAMES.index(e[0]), LAYER_NAMES.index(e[1]))):
        lines.append(f"    {a} --> {b}")
    lines.append("```")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m abaw_ce.tools.import_check",
                                     description="Check that imports follow the kit's layer order.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the package folder to check (default: the installed abaw_ce)")
    parser.add_argument("--graph", action="store_true", help="print the layer graph as a Mermaid diagram")
    args = parser.parse_args(argv)
    if args.graph:
        print(layer_graph(args.root))
        return 0
    problems = check(args.root)
    for line in problems:
        print(line)
    modules, imports = collect_imports(args.root)
    print(f"import check: {len(modules)} modules, {len(imports)} imports, "
          + ("OK" if not problems else f"{len(problems)} breach(es)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
