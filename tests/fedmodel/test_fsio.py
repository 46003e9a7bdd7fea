"""Tests of :mod:`fedmodel.fsio`: durable writes and owner-only secret files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedmodel.fsio import SecretSizeError, atomic_write, create_new, load_or_create_secret, read_secret


def test_atomic_write_replaces_whole_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.csv"
    atomic_write(path, b"old")
    atomic_write(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["file.csv"]


def test_create_new_refuses_an_existing_file_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        create_new(path, b"mine", mode=0o600)
    assert path.read_bytes() == b"theirs"


def test_create_new_is_born_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        create_new(tmp_path / "ca.pem", b"public", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644


def test_secret_of_the_wrong_size_says_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    path.write_bytes(b"short")
    with pytest.raises(SecretSizeError, match="expected 32 bytes, found 5") as info:
        read_secret(path, 32)
    assert (info.value.expected, info.value.found) == (32, 5)
    assert isinstance(info.value, ValueError)


def test_secret_is_created_once_0600_in_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "owner.key"
    key = load_or_create_secret(path, 32)
    assert load_or_create_secret(path, 32) == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
