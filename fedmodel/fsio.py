"""Durable file writes (nothing half-written is ever seen under the final name) and owner-only secret files."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


class SecretSizeError(ValueError):
    """A secret file holds another number of bytes than expected (``found``, ``expected``)."""

    def __init__(self, path: Path, expected: int, found: int) -> None:
        super().__init__(f"{path} is not a key file: expected {expected} bytes, found {found}")
        self.path, self.expected, self.found = path, expected, found


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder.

    Raises OSError (the temporary file is removed) if anything fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` holding ``data``, born with ``mode`` (never readable by others meanwhile), fsynced.

    The file is opened ``O_CREAT | O_EXCL | O_NOFOLLOW``: FileExistsError if anything is already
    there (a file appearing concurrently included). On any other failure the new file is removed
    and the OSError raised.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)  # the umask may have cleared bits; the file is still empty
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    fsync_dir(Path(path).parent)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a file just created or renamed in it survives a crash."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret(path: Path, size: int) -> bytes:
    """The ``size`` secret bytes stored in ``path``.

    Raises FileNotFoundError if there is no file, OSError if it cannot be read, SecretSizeError (a
    ValueError naming the file and both sizes) if it holds another number of bytes.
    """
    data = Path(path).read_bytes()
    if len(data) != size:
        raise SecretSizeError(Path(path), size, len(data))
    return data


def load_or_create_secret(path: Path, size: int) -> bytes:
    """Read the secret at ``path``, or create ``size`` random bytes there, readable by the owner only (0600).

    The new secret is written to a temporary file created 0600 (``O_CREAT|O_EXCL``), fsynced, then
    linked to ``path``, which fails if another process got there first: both then use the same secret.
    The folder is created 0700 if missing. Raises as :func:`read_secret`.
    """
    path = Path(path)
    if path.exists():
        return read_secret(path, size)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return read_secret(path, size)
