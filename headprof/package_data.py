"""What ships inside the package (`headprof/data/`: needles, the embedded model's references), as real paths.

Read with `importlib.resources`, so the files are found from any working directory after a wheel install.
Below `workspace.py` (which names the files) and `validation.py` (which refuses outputs inside this folder).
"""

from __future__ import annotations

import atexit
import contextlib
from importlib.resources import as_file, files
from pathlib import Path

_resources = contextlib.ExitStack()  # keeps packaged files materialised (a no-op for an unpacked wheel)
atexit.register(_resources.close)


def packaged(*parts: str) -> Path:
    """A file or folder shipped inside the package, as a real path."""
    return _resources.enter_context(as_file(files("headprof").joinpath("data", *parts)))


def data_dir() -> Path:
    """The package's data folder (needles, references); nothing is ever written under it."""
    return packaged()


def is_packaged(path: Path) -> bool:
    """Whether `path` lies inside the package's data folder."""
    return Path(path).resolve().is_relative_to(data_dir().resolve())
