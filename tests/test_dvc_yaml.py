"""`dvc.yaml` depends on the code each stage runs: every module of this repository that a stage's
entry point imports (directly or not, at any depth, also inside functions) lies under one of the
stage's `deps`, as DVC itself resolves them. DVC reruns a stage when anything under a dep changes,
so an edit to any imported module marks the stage changed (`test_dvc_repro` checks that on a real
`dvc status`)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {'describe': 'pipeline/describe.py', 'make_sample': 'pipeline/make_sample.py',
                'convert': 'pipeline/convert.py', 'train': 'pipeline/train.py', 'evaluate': 'pipeline/evaluate.py'}


def _module_file(name: str) -> Path | None:
    """The repository file of a dotted module name, or None for a module from elsewhere."""
    base = REPO.joinpath(*name.split('.'))
    for candidate in (base.with_suffix('.py'), base / '__init__.py'):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names imported anywhere in `path` (relative imports resolved)."""
    package = '.'.join(path.relative_to(REPO).with_suffix('').parts)
    if path.name != '__init__.py':
        package = package.rpartition('.')[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{parent}.{base}' if base else parent
            names.add(base)
            names.update(f'{base}.{alias.name}' for alias in node.names)
    return names


def imported_files(entry: str) -> set[Path]:
    """Every repository file `entry` imports, transitively, with the parent packages' `__init__.py`."""
    seen, todo = set(), [REPO / entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split('.')
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = _module_file('.'.join(parts[:depth]))
                if found is not None:
                    todo.append(found)
    return seen


@pytest.fixture(scope='module')
def stage_imports() -> dict[str, set[Path]]:
    """`imported_files` of every stage, walked in a fresh interpreter (this file run as a script):
    in the test session, where other threads run, CPython 3.11's `ast.parse` can fail with a
    spurious `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905)."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {stage: {Path(f) for f in files} for stage, files in json.loads(out).items()}


@pytest.fixture(scope='module')
def stage_deps() -> dict[str, list[Path]]:
    from dvc.repo import Repo
    with Repo(str(REPO)) as repo:
        deps = {}
        for stage in repo.index.stages:
            group = stage.addressing.split('@')[0]
            deps.setdefault(group, [Path(d.fs_path) for d in stage.deps if not hasattr(d, 'params')])
    return deps


@pytest.mark.parametrize('stage', sorted(ENTRY_POINTS))
def test_every_imported_module_is_a_dependency(stage, stage_deps, stage_imports):
    deps = stage_deps[stage]
    missing = [str(f.relative_to(REPO)) for f in sorted(stage_imports[stage])
               if not any(f == d or d in f.parents for d in deps)]
    assert not missing, f'{stage} imports {missing}, which dvc.yaml does not list in its deps'
    assert any(d == REPO / 'pipeline' / 'python' for d in deps)  # the launcher runs the stage


def test_the_walker_sees_imports_inside_functions(stage_imports):
    files = {str(f.relative_to(REPO)) for f in stage_imports['train']}
    assert {'sgformer/train/run.py', 'sgformer/train/trainer.py', 'sgformer/models/sgformer.py',
            'sgformer/augment/rand_augment.py', 'sgformer/__init__.py'} <= files
    assert 'sgformer/eval/pictures.py' not in files


if __name__ == '__main__':  # the `stage_imports` walk
    print(json.dumps({stage: sorted(map(str, imported_files(entry))) for stage, entry in ENTRY_POINTS.items()}))
