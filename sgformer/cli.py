"""What the command-line entry points share: the errors a user can fix end in one line and exit
code 1, not a traceback."""
import sys
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError, Params, load_params
from .io import disk_full_message


def load_params_or_exit(path: str | Path = 'params.yaml') -> Params:
    """`load_params` for a command-line entry point: a bad file ends the process with its message."""
    try:
        return load_params(path)
    except ConfigError as e:
        sys.exit(f'error: {e}')


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
