"""Result files: written atomically (a temporary file beside the target, then a rename) and
readable by others (0644). The one writer every report, trace and benchmark result goes through.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from waferllm.errors import WaferError

RESULT_FILE_MODE = 0o644  # mkstemp creates 0600; result files are for others to read


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` atomically; an unwritable place is a user error."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, RESULT_FILE_MODE)
    except OSError as exc:
        raise WaferError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
