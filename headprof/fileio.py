"""Atomic writes, orphan clean-up and one writer per output: a crash, Ctrl-C or kill -9 never leaves a
half-written artifact, and a temp file left by a killed run is removed by the next write to that path.

Temp files are named `.<name>.<pid>.<random>.tmp` next to their target, so a later write can tell a
dead run's leftovers (its pid is gone) from a live concurrent writer's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headprof.errors import HeadprofError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp / mkdtemp create 0600 / 0700; outputs are ordinary files, with the modes the umask allows."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(path: Path) -> None:
    """Delete temp files (and temp folders) of `path` left by runs that no longer exist."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if not match or int(match[1]) == os.getpid() or pid_alive(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink()


def is_regular_or_absent(path: Path) -> bool:
    """What an atomic rename may replace: nothing, or a regular file (never a device or a directory)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return True
    return stat.S_ISREG(mode)


def temp_prefix(path: Path) -> str:
    """The prefix of this process's temp names for `path` (mkstemp / mkdtemp add a random part)."""
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block finishes.

    Refuses a target that exists and is not a regular file: a rename would replace a device such as
    `/dev/full` or a named pipe with the new file.
    """
    path = Path(path)
    if not is_regular_or_absent(path):
        raise HeadprofError(f"{path} exists and is not a regular file; not replacing it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HeadprofError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        share_mode(tmp_path)  # after the block: writers such as safetensors recreate the file as 0600
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold `<path>.lock` for the block: a second run writing the same output is refused, not interleaved.

    The lock is an advisory `flock`, released by the kernel when a run dies (even by kill -9), so a
    stale lock file never blocks the next run; the file is removed when the block ends.
    """
    lock = Path(f"{path}.lock")
    created = [p for p in [lock.parent, *lock.parent.parents] if not p.exists()]  # deepest first
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise HeadprofError(f"cannot write to {lock.parent}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise HeadprofError(
                f"another headprof run (pid {holder}) is writing {what} {path}; wait for it or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)
        for folder in created:  # a run that wrote nothing leaves no empty output folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through `atomic_path`: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# Characters `str.splitlines` breaks lines at that JSON leaves raw inside a string (it escapes those below U+0020).
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def jsonl_line(obj: Any, sort_keys: bool = False) -> str:
    """One JSONL line (UTF-8 kept readable) with NEL, LINE and PARAGRAPH SEPARATOR escaped: readers that split
    lines the way Python's `splitlines` does would otherwise cut the row in two."""
    line = json.dumps(obj, ensure_ascii=False, sort_keys=sort_keys)
    for raw, escaped in _LINE_BREAKS.items():
        line = line.replace(raw, escaped)
    return line + "\n"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file, read in chunks (artifacts cite their sources by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
