"""The import graph of this repository's code as `ast` reads it: every import of a file, inside
functions too, relative ones resolved, edges going to the module imported (not to the packages
above it, whose `__init__.py` Python runs first).

Run as a script, it prints `{file: [repository files it imports]}` as JSON. The tests read it from a
fresh interpreter: in a test session, where other threads run, CPython 3.11's `ast.parse` can fail
with a spurious `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905).
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ('sgformer', 'pipeline')


def module_file(name: str) -> Path | None:
    """The repository file of a dotted module name, or None for a module from elsewhere."""
    base = REPO.joinpath(*name.split('.'))
    for candidate in (base.with_suffix('.py'), base / '__init__.py'):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules imported anywhere in `path`: `import a.b` gives `a.b`; `from a
    import b` gives `a.b` when that is a module of this repository, else `a` (b is a name in it)."""
    package = module_name(path) if path.name == '__init__.py' else module_name(path).rpartition('.')[0]
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{parent}.{base}' if base else parent
            for alias in node.names:
                modules.add(f'{base}.{alias.name}' if module_file(f'{base}.{alias.name}') else base)
    return modules


def direct_imports(path: Path) -> set[Path]:
    """The repository files of the modules `path` imports."""
    return {f for name in imported_modules(path) if (f := module_file(name)) is not None and f != path}


def packages_above(path: Path) -> list[Path]:
    """The `__init__.py` files Python runs before it runs `path` (its packages, outermost first)."""
    parts = path.relative_to(REPO).parts[:-1]
    return [init for depth in range(1, len(parts) + 1) if (init := REPO.joinpath(*parts[:depth], '__init__.py')).is_file()]


def graph() -> dict[str, list[str]]:
    """`{file: [files it imports]}` over the repository's packages, paths relative to the root."""
    files = sorted(p for package in PACKAGES for p in (REPO / package).rglob('*.py'))
    return {str(f.relative_to(REPO)): sorted(str(g.relative_to(REPO)) for g in direct_imports(f)) for f in files}


def load_graph() -> dict[Path, set[Path]]:
    """`graph()`, computed in a fresh interpreter (see the module docstring), as absolute paths."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {REPO / f: {REPO / g for g in imports} for f, imports in json.loads(out).items()}


if __name__ == '__main__':
    print(json.dumps(graph()))
