"""What the command-line entry points share: the errors a user can fix end in one line and exit
code 1, not a traceback."""
import sys
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError, Params, Variant, load_params
from .datasets.folder import DataError, check_source
from .io import disk_full_message


def load_params_or_exit(path: str | Path = 'params.yaml', *, data_source: bool = False) -> Params:
    """`load_params` for a command-line entry point: a bad file ends the process with its message.

    Args:
        data_source: also check the folder `data.source` names (it exists, unless make_sample
            writes it, and its train/ and val/ hold the same classes): the stages that read it.
    """
    try:
        params = load_params(path)
    except ConfigError as e:
        sys.exit(f'error: {e}')
    if data_source:
        try:
            check_source(params.data.source, written_by_make_sample=params.data.source == params.sample.out)
        except DataError as e:
            sys.exit(f'error: {path}: data.source: {e}')
    return params


def variant_or_exit(params: Params, name: str, path: str | Path, *, hint: str = '') -> Variant:
    """`params.variants[name]`; an unknown name ends the process, listing the variants (and `hint`)."""
    if name not in params.variants:
        sys.exit(f'error: {path}: variants.{name}: no such variant (variants: {", ".join(params.variants)}){hint}')
    return params.variants[name]


@contextmanager
def exit_on_user_errors(*errors: type[BaseException]):
    """Exit with `error: <message>` for any of `errors`, and for a write that ran out of space."""
    try:
        yield
    except errors as e:
        sys.exit(f'error: {e}')
    except OSError as e:
        message = disk_full_message(e)
        if message is None:
            raise
        sys.exit(f'error: {message}')
