"""`dvc.yaml` depends on the code each stage runs: every module of this repository that a stage's
entry point imports (directly or not, at any depth, also inside functions) lies under one of the
stage's `deps`, as DVC itself resolves them. DVC reruns a stage when anything under a dep changes,
so an edit to any imported module marks the stage changed (`test_dvc_repro` checks that on a real
`dvc status`)."""
from pathlib import Path

import pytest

from import_graph import REPO, load_graph, packages_above

ENTRY_POINTS = {'describe': 'pipeline/describe.py', 'make_sample': 'pipeline/make_sample.py',
                'convert': 'pipeline/convert.py', 'train': 'pipeline/train.py', 'evaluate': 'pipeline/evaluate.py',
                'compare': 'pipeline/compare.py'}


def imported_files(entry: Path, graph: dict[Path, set[Path]]) -> set[Path]:
    """Every repository file `entry` imports, transitively, with the packages' `__init__.py` that
    importing them runs (the entry's own package aside: the stage runs the entry file)."""
    seen, todo = {entry}, list(graph.get(entry, ()))
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend([*graph.get(path, ()), *packages_above(path)])
    return seen


@pytest.fixture(scope='module')
def stage_imports() -> dict[str, set[Path]]:
    graph = load_graph()
    return {stage: imported_files(REPO / entry, graph) for stage, entry in ENTRY_POINTS.items()}


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

