"""numba's on-disk cache for the code FFCV compiles in every process.

FFCV compiles with numba, each time a process imports it or builds a loader: a typed dict at
import, its traversal order, and each decoder and transform of a pipeline. On 2 CPU cores that is
~17 s per loader process (a train stage builds two), paid again by every stage and every rank.
numba can keep compiled code on disk (next to the sources, or in `NUMBA_CACHE_DIR`), but only for
functions that ask for it, and FFCV's do not. `import_ffcv()` turns it on, before FFCV is first
imported, for what numba can cache safely:

- module-level compiled functions (numba's typed dict, FFCV's traversal order);
- FFCV's page reader, which it compiles for a signature given up front;
- FFCV's generated operations (`Compiler.compile`) whose closures hold only plain values. A closure
  that holds another compiled function would pickle it with a per-process id, so its cache key
  would change every run: those are compiled in each process (FFCV's JPEG decoders, ~1 s).

numba's key covers the bytecode, the closure's values, the signature and the CPU; it leaves out
the compile options because one decorator usually fixes them. FFCV compiles the same function
serially or in parallel depending on its thread count, so the key here adds the options.

This reaches into FFCV's compiler and numba's cache classes, which change between releases, so it
runs only with the versions it was written for (`WRITTEN_FOR`, the pins of pyproject.toml); with
others, or with `SGFORMER_NUMBA_CACHE=0` in the environment, FFCV is imported as it is and compiles
in every process (one line on stderr says why, for other versions). The fix upstream is for FFCV
to pass `cache=True` to numba.
"""
import functools
import os
import sys
from importlib.metadata import version

WRITTEN_FOR = {'ffcv': '1.0.2', 'numba': '0.68.1'}
SWITCH = 'SGFORMER_NUMBA_CACHE'  # '0': off


def cache_unavailable(installed: dict[str, str], environ=os.environ) -> str | None:
    """Why the disk cache stays off (switched off, or other versions installed), or None."""
    if environ.get(SWITCH) == '0':
        return f'{SWITCH}=0'
    other = [f'{name} {installed[name]}' for name, wanted in WRITTEN_FOR.items() if installed[name] != wanted]
    if other:
        written = ', '.join(f'{name} {wanted}' for name, wanted in WRITTEN_FOR.items())
        return f"written for {written}, found {', '.join(other)}"
    return None


@functools.cache
def _option_keyed_cache():
    """numba's FunctionCache whose index key adds the dispatcher's compile options."""
    from numba.core.caching import FunctionCache

    class OptionKeyedCache(FunctionCache):
        def __init__(self, py_func, options: dict):
            self._options = tuple(sorted((k, repr(v)) for k, v in options.items()))
            super().__init__(py_func)

        def _index_key(self, sig, codegen):
            return (*super()._index_key(sig, codegen), self._options)
    return OptionKeyedCache


def _holds_a_dispatcher(value, dispatcher_type) -> bool:
    if isinstance(value, dispatcher_type):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_holds_a_dispatcher(v, dispatcher_type) for v in value)
    if isinstance(value, dict):
        return any(_holds_a_dispatcher(v, dispatcher_type) for v in value.values())
    return False


def _calls_through_ctypes(py_func) -> bool:
    """numba refuses to cache code holding ctypes pointers (FFCV's C bindings) and warns at every compile."""
    import ctypes
    return any(isinstance(py_func.__globals__.get(name), ctypes._CFuncPtr) for name in py_func.__code__.co_names)


def cache_on_disk(fn):
    """Give a numba dispatcher a disk cache keyed also by its compile options; returns `fn`. A
    function numba cannot place (generated source, no writable cache folder) stays as it is."""
    from numba.core.dispatcher import Dispatcher
    if not isinstance(fn, Dispatcher):  # FFCV's compiler turned off
        return fn
    cells = [cell.cell_contents for cell in fn.py_func.__closure__ or ()]
    if _holds_a_dispatcher(cells, Dispatcher) or _calls_through_ctypes(fn.py_func):
        return fn
    try:
        fn._cache = _option_keyed_cache()(fn.py_func, fn.targetoptions)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        pass
    return fn


def _cache_module_functions(module) -> None:
    from numba.core.dispatcher import Dispatcher
    for value in vars(module).values():
        if isinstance(value, Dispatcher) and value.__module__ == module.__name__:
            cache_on_disk(value)


@functools.cache
def import_ffcv() -> None:
    """Import FFCV with numba's disk cache on for its compiled code (when `cache_unavailable` says
    nothing against it). Call it before any `ffcv` import."""
    reason = cache_unavailable({name: version(name) for name in WRITTEN_FOR})
    if reason is not None:
        if not reason.startswith(SWITCH):
            print(f'numba disk cache for FFCV off ({reason}): FFCV compiles in every process', file=sys.stderr)
        import ffcv  # noqa: F401
        return
    import numba.typed.typeddict
    from numba.core import typeinfer
    from numba.core.dispatcher import Dispatcher
    _cache_module_functions(numba.typed.typeddict)  # FFCV builds a typed dict at import

    from ffcv.pipeline.compiler import Compiler
    compile_uncached = Compiler.compile.__func__

    def compile_cached(cls, code, signature=None):
        fn = cache_on_disk(compile_uncached(cls, code))
        if signature is not None and isinstance(fn, Dispatcher):
            # what `njit(signature)` does, now with the cache in place (FFCV's page reader)
            with typeinfer.register_dispatcher(fn):
                fn.compile(signature)
            fn.disable_compile()
        return fn
    Compiler.compile = classmethod(compile_cached)

    import ffcv.traversal_order.quasi_random
    _cache_module_functions(ffcv.traversal_order.quasi_random)
