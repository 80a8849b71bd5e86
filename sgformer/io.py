"""Atomic file writes: a reader never sees a half-written output (JSON, TSV, any writer)."""
import csv
import errno
import glob
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    The temporary file is removed on any failure (a full disk included), so nothing half-written
    is left behind and an older complete `path` stays as it was; one left by a killed writer is
    removed by the next write (one writer per output: rank 0).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f'.{glob.escape(path.name)}.*.tmp'):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically (a DVC metrics file, a report, a card)."""
    write_text_atomic(path, json.dumps(data, indent=2) + '\n')


def write_tsv_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows with the same keys as a TSV table (a DVC plot), rewritten whole and atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter='\t', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def disk_full_message(error: OSError) -> str | None:
    """One line for a write that failed for lack of space (a full disk, a quota, a file size
    limit), or None for any other error."""
    if error.errno not in DISK_FULL:
        return None
    where = f' writing {error.filename}' if error.filename else ''
    return f'no space left{where} ({error.strerror or os.strerror(error.errno)}): free some space and rerun; nothing half-written was kept'
