"""Checking that an output folder can be written before any work starts (one line instead of a late OSError)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import UnetDeployError
from ..fileio import quote, remove_stale_temporaries, temporary_name


def check_output_folder(out: str | Path, folders: Iterable[str | Path] = (), files: Iterable[str | Path] = ()) -> None:
    """Make ``out`` and ``folders`` (each must be a folder or absent), prove each can take a file by
    writing and deleting one byte, refuse ``files`` that are folders, and remove the temporaries a
    killed earlier run left there (``fileio.remove_stale_temporaries``). Raises one-line
    ``UnetDeployError`` naming the path and the fix."""
    for folder in [Path(out), *map(Path, folders)]:
        if folder.exists() and not folder.is_dir():
            raise UnetDeployError(f"{quote(folder)}: exists and is not a folder; choose another output folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = temporary_name(folder / "write-check")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, b"\0")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise UnetDeployError(f"{quote(folder)}: cannot write there ({reason}); choose another output folder") from None
        remove_stale_temporaries(folder)
    for file in map(Path, files):
        if file.is_dir():
            raise UnetDeployError(f"{quote(file)}: is a folder where a file is to be written; remove it or choose "
                                  "another output folder")
