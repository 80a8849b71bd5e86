"""SG-Former for timm: models, data, training, tracking, config.

`import sgformer` registers the `sgformer_*` models with timm, as soon as timm is imported, so
`import sgformer; timm.create_model('sgformer_s')` works in either import order. `import
sgformer` itself loads neither torch nor timm: the config check and the data tools that import
`sgformer.config` or `sgformer.datasets.sample` start in a fraction of a second.
"""
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def _register_models() -> None:
    from . import models  # noqa: F401  (the @register_model functions run on import)


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Imports `sgformer.models` right after timm's own import finishes, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register_models()


if 'timm' in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())


def __getattr__(name: str):
    if name == 'models':  # `sgformer.models` without an explicit import, as before
        import importlib
        return importlib.import_module('.models', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
