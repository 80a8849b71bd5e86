"""The modules' layering: imports only go down the floors, never up or sideways, and never in a
circle; the light modules (what validating params.yaml and writing the sample need) never reach
the model."""
from pathlib import Path

import pytest

from import_graph import REPO, load_graph

# Lowest first. A module may import modules of a lower floor, and of its own unit (package or module).
FLOORS = (
    ('sgformer/__init__.py', 'sgformer/config.py', 'sgformer/io.py'),  # the schema, atomic writes
    ('sgformer/datasets',),  # what is on disk: the sample, image folders, betons
    ('sgformer/models', 'sgformer/accuracy.py', 'sgformer/runtime.py', 'sgformer/flops.py'),  # the model; top-k
    # sums, device choices and FLOP counts for any model
    ('sgformer/loader.py', 'sgformer/augment', 'sgformer/export.py'),  # batches, augmentation, the export folder
    ('sgformer/weights.py',),  # weights from an export or an official checkpoint
    ('sgformer/tracking',),  # MLflow
    ('sgformer/train', 'sgformer/eval'),  # the two jobs: neither imports the other
    ('sgformer/cli.py',),  # what the commands share
    ('pipeline',),  # the DVC stages and the tools
)
LIGHT = ('sgformer/config.py', 'sgformer/io.py', 'sgformer/cli.py', 'sgformer/datasets/sample.py',
         'sgformer/datasets/folder.py', 'pipeline/make_sample.py')
MODEL_FLOOR = 2  # FLOORS' index of sgformer/models: torch and timm from here up


def unit_of(path: Path) -> tuple[int, str]:
    """(floor, unit) of a repository file."""
    relative = str(path.relative_to(REPO))
    for floor, units in enumerate(FLOORS):
        for unit in units:
            if relative == unit or relative.startswith(unit + '/'):
                return floor, unit
    raise AssertionError(f'{relative} is on no floor of FLOORS: add it')


@pytest.fixture(scope='module')
def graph() -> dict[Path, set[Path]]:
    return load_graph()


def test_imports_only_go_down(graph):
    wrong = []
    for module, imports in graph.items():
        floor, unit = unit_of(module)
        for imported in imports:
            other_floor, other_unit = unit_of(imported)
            if other_floor > floor or (other_floor == floor and other_unit != unit):
                wrong.append(f'{module.relative_to(REPO)} (floor {floor}) imports {imported.relative_to(REPO)} '
                             f'(floor {other_floor})')
    assert not wrong, '\n'.join(wrong)


def test_no_import_circles(graph):
    state: dict[Path, str] = {}

    def visit(module: Path, path: list[Path]) -> None:
        state[module] = 'open'
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 'open':
                circle = path[path.index(imported):] + [imported]
                raise AssertionError(' -> '.join(str(p.relative_to(REPO)) for p in circle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_light_modules_never_reach_the_model(graph):
    for light in LIGHT:
        seen, todo = set(), [REPO / light]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        heavy = sorted(name for m in seen if unit_of(m)[0] >= MODEL_FLOOR and (name := str(m.relative_to(REPO))) not in LIGHT)
        assert not heavy, f'{light} imports {heavy}'
