"""numba's disk cache for FFCV's compiled code: hits in a second process, keyed by closure values
and compile options, never for what it cannot key safely. Each case runs fresh processes against
a cache folder of its own (`NUMBA_CACHE_DIR`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgformer.config import Convert, Sample
from sgformer.datasets.beton import convert_folder
from sgformer.datasets.numba_cache import SWITCH, WRITTEN_FOR, cache_unavailable
from sgformer.datasets.sample import write_sample

REPO = Path(__file__).resolve().parents[2]

# A module on disk (numba caches only functions whose source file it can find).
FUNCTIONS = '''
import ctypes
from numba import njit, prange

libc_abs = ctypes.CDLL(None).abs
libc_abs.argtypes, libc_abs.restype = [ctypes.c_int], ctypes.c_int

def absolute(x):
    return libc_abs(x)

def add(k):
    def f(x):
        return x + k
    return f

def total(x):
    s = 0.0
    for i in prange(x.shape[0]):
        s += x[i]
    return s
'''

# Prints what the compiled call returned and the dispatcher's cache hits and misses.
RUN = '''
import json, sys
import numpy as np
from numba import njit
from sgformer.datasets.numba_cache import cache_on_disk
import functions
case, arg = sys.argv[1], sys.argv[2]
if case == 'closure':
    fn = cache_on_disk(njit(functions.add(int(arg))))
    out = fn(10)
elif case == 'options':
    fn = cache_on_disk(njit(parallel=arg == 'parallel')(functions.total))
    out = fn(np.ones(8))
elif case == 'ctypes':
    fn = cache_on_disk(njit(functions.absolute))
    out = [fn(-3), type(fn._cache).__name__]
else:  # a closure over another compiled function
    inner = njit(functions.add(1))
    fn = cache_on_disk(njit(functions.add(inner)))
    out = type(fn._cache).__name__
print(json.dumps([out, sum(fn.stats.cache_hits.values()), sum(fn.stats.cache_misses.values())]))
'''


def run(tmp_path: Path, *args: str, code: str = RUN) -> list:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / 'cache'), PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
    proc = subprocess.run([sys.executable, '-c', code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def functions(tmp_path):
    (tmp_path / 'functions.py').write_text(FUNCTIONS)
    return tmp_path


def test_a_closure_is_cached_per_value_of_what_it_holds(functions):
    assert run(functions, 'closure', '1') == [11, 0, 1]  # compiled, then saved
    assert run(functions, 'closure', '1') == [11, 1, 0]  # loaded in a new process
    assert run(functions, 'closure', '2') == [12, 0, 1]  # another value held: its own entry


def test_serial_and_parallel_compiles_are_separate_entries(functions):
    assert run(functions, 'options', 'serial') == [8.0, 0, 1]
    assert run(functions, 'options', 'parallel') == [8.0, 0, 1]  # not the serial code from the cache
    assert run(functions, 'options', 'parallel') == [8.0, 1, 0]
    assert run(functions, 'options', 'serial') == [8.0, 1, 0]


def test_a_closure_over_a_compiled_function_is_not_cached(functions):
    assert run(functions, 'dispatcher', '-')[0] == 'NullCache'
    assert not (functions / 'cache').exists()


def test_code_calling_through_ctypes_is_left_uncached(functions):
    assert run(functions, 'ctypes', '-') == [[3, 'NullCache'], 0, 1]  # numba would warn "Cannot cache"


LOADER = '''
import gc, json, sys
from numba.core.dispatcher import Dispatcher
from sgformer.config import Loader
from sgformer.loader import create_ffcv_loader
loader = create_ffcv_loader(sys.argv[1], train=True, batch_size=4, img_size=32, loader=Loader(num_workers=1))
labels = [batch[1].tolist() for batch in loader]
dispatchers = [d for d in gc.get_objects() if isinstance(d, Dispatcher)]
print(json.dumps([sum(sum(d.stats.cache_hits.values()) for d in dispatchers), len(labels)]))
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_ffcv_loader_process_loads_its_compiled_code(tmp_path):
    write_sample(tmp_path / 'src', Sample(num_classes=2, train_per_class=6, val_per_class=1, bad_files=False))
    convert_folder(tmp_path / 'src', tmp_path / 'betons', Convert(max_resolution=64, num_workers=1),
                   report=tmp_path / 'report.json')
    beton = str(tmp_path / 'betons' / 'train.beton')
    cold = run(tmp_path, beton, code=LOADER)
    warm = run(tmp_path, beton, code=LOADER)
    assert cold == [0, 3] and warm[1] == 3
    # numba's typed dict (3 functions), the traversal order, the crop sampler, the label decoder, the flip
    assert warm[0] >= 7
    cached = {p.name.split('-')[0] for p in (tmp_path / 'cache').rglob('*.nbi')}
    assert {'typeddict._make_dict', 'quasi_random.generate_order_inner', 'flip.RandomHorizontalFlip.generate_code.locals.flip',
            'os_cache.OSCacheManager.compile_reader.locals.read'} <= cached


def test_the_cache_runs_only_with_the_versions_it_was_written_for_and_can_be_switched_off():
    assert cache_unavailable(dict(WRITTEN_FOR), environ={}) is None
    assert cache_unavailable(dict(WRITTEN_FOR, numba='0.69.0'), environ={}) == \
        f"written for ffcv {WRITTEN_FOR['ffcv']}, numba {WRITTEN_FOR['numba']}, found numba 0.69.0"
    assert cache_unavailable(dict(WRITTEN_FOR), environ={SWITCH: '0'}) == f'{SWITCH}=0'


SWITCHED = '''
import json
from ffcv.pipeline.compiler import Compiler
from sgformer.datasets.numba_cache import import_ffcv
original = Compiler.compile.__func__
import_ffcv()
print(json.dumps([Compiler.compile.__func__ is original]))
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize('switch, untouched', [('0', True), ('1', False)])
def test_switched_off_ffcv_is_imported_as_it_is(tmp_path, monkeypatch, switch, untouched):
    monkeypatch.setenv(SWITCH, switch)
    assert run(tmp_path, code=SWITCHED) == [untouched]
