"""Checked puts and content hashes through extended attributes."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import blake3
import pytest

from .mount_helpers import Mount, eventually

DATA = os.urandom(200_000)
OTHER = b"previous content\n"
HASH = blake3.blake3(DATA).hexdigest()
WRONG = blake3.blake3(b"not it").hexdigest()


def errno_of(call, *args) -> int:
    with pytest.raises(OSError) as raised:
        call(*args)
    return raised.value.errno


def test_blake3_attribute_is_the_committed_hash(env_dir: Path) -> None:
    (env_dir / "f").write_bytes(DATA)
    assert os.getxattr(env_dir / "f", "user.fusestore.blake3").decode() == HASH
    result = subprocess.run(["getfattr", "--only-values", "-n", "user.fusestore.blake3", str(env_dir / "f")],
                            capture_output=True, text=True, check=True)
    assert result.stdout == HASH
    (env_dir / "empty").write_bytes(b"")
    assert os.getxattr(env_dir / "empty", "user.fusestore.blake3").decode() == blake3.blake3(b"").hexdigest()


def test_blake3_attribute_is_enodata_while_writes_are_uncommitted(env_dir: Path) -> None:
    (env_dir / "f").write_bytes(OTHER)
    with open(env_dir / "f", "r+b", buffering=0) as handle:
        handle.write(b"changed")
        assert errno_of(os.getxattr, env_dir / "f", "user.fusestore.blake3") == errno.ENODATA
    assert eventually(lambda: os.getxattr(env_dir / "f", "user.fusestore.blake3").decode()
             == blake3.blake3(b"changed" + OTHER[7:]).hexdigest())
    assert errno_of(os.getxattr, env_dir, "user.fusestore.blake3") == errno.ENODATA


def test_reserved_attributes_are_read_only_and_not_listed(env_dir: Path) -> None:
    path = env_dir / "f"
    path.write_bytes(DATA)
    assert errno_of(os.setxattr, path, "user.fusestore.blake3", HASH.encode()) == errno.EPERM
    assert errno_of(os.removexattr, path, "user.fusestore.blake3") == errno.EPERM
    assert errno_of(os.setxattr, path, "user.fusestore.other", b"x") == errno.EPERM
    os.setxattr(path, "user.ordinary", b"kept")
    os.setxattr(path, "user.fusestore.expect", HASH.encode())
    assert os.listxattr(path) == ["user.ordinary"]
    result = subprocess.run(["setfattr", "-n", "user.fusestore.blake3", "-v", HASH, str(path)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr


@pytest.mark.parametrize("value", [b"", b"abc", b"g" * 64, b"0" * 63, b"0" * 66])
def test_expect_must_be_a_blake3_hash(env_dir: Path, value: bytes) -> None:
    (env_dir / "f").write_bytes(OTHER)
    assert errno_of(os.setxattr, env_dir / "f", "user.fusestore.expect", value) == errno.EINVAL
    assert errno_of(os.setxattr, env_dir, "user.fusestore.expect", HASH.encode()) == errno.EINVAL


def test_checked_put_of_new_file_with_right_hash(mount: Mount, env_dir: Path) -> None:
    fd = os.open(env_dir / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    os.setxattr(fd, "user.fusestore.expect", HASH.encode())
    os.write(fd, DATA)
    os.close(fd)
    assert (env_dir / "new").read_bytes() == DATA


def test_checked_put_of_new_file_with_wrong_hash_leaves_nothing(mount: Mount, env_dir: Path) -> None:
    (env_dir / "other").write_bytes(OTHER)
    blobs, pool = mount.blob_count(), mount.pool_bytes()
    fd = os.open(env_dir / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    os.setxattr(fd, "user.fusestore.expect", WRONG.encode())
    os.write(fd, DATA)
    assert errno_of(os.close, fd) == errno.EBADMSG
    assert eventually(lambda: not (env_dir / "new").exists())
    assert (mount.blob_count(), mount.pool_bytes()) == (blobs, pool)
    assert sorted(os.listdir(env_dir)) == ["other"]


def test_checked_put_of_existing_file_with_wrong_hash_keeps_old_content(mount: Mount, env_dir: Path,
                                                                      tmp_path: Path) -> None:
    (env_dir / "f").write_bytes(OTHER)
    (tmp_path / "src").write_bytes(DATA)
    blobs = mount.blob_count()
    subprocess.run(["setfattr", "-n", "user.fusestore.expect", "-v", WRONG, str(env_dir / "f")], check=True)
    result = subprocess.run(["bash", "-c", f"cat {tmp_path}/src > {env_dir}/f"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Bad message" in result.stderr
    assert eventually(lambda: (env_dir / "f").read_bytes() == OTHER)
    assert mount.blob_count() == blobs
    assert os.getxattr(env_dir / "f", "user.fusestore.blake3").decode() == blake3.blake3(OTHER).hexdigest()


def test_shell_redirection_with_right_hash_commits_once(env_dir: Path, tmp_path: Path) -> None:
    """The shell flushes its own descriptor before cat writes: that flush must not use up the check."""
    (env_dir / "f").write_bytes(OTHER)
    (tmp_path / "src").write_bytes(DATA)
    subprocess.run(["setfattr", "-n", "user.fusestore.expect", "-v", HASH, str(env_dir / "f")], check=True)
    subprocess.run(["bash", "-c", f"cat {tmp_path}/src > {env_dir}/f"], check=True)
    assert (env_dir / "f").read_bytes() == DATA
    assert errno_of(os.getxattr, env_dir / "f", "user.fusestore.expect") == errno.ENODATA


def test_expectation_applies_to_the_next_commit_only(env_dir: Path) -> None:
    (env_dir / "f").write_bytes(OTHER)
    os.setxattr(env_dir / "f", "user.fusestore.expect", HASH.encode())
    assert os.getxattr(env_dir / "f", "user.fusestore.expect").decode() == HASH
    (env_dir / "f").write_bytes(DATA)
    (env_dir / "f").write_bytes(OTHER)  # no expectation left: any content is fine
    assert (env_dir / "f").read_bytes() == OTHER
    os.setxattr(env_dir / "f", "user.fusestore.expect", WRONG.encode())
    os.removexattr(env_dir / "f", "user.fusestore.expect")
    (env_dir / "f").write_bytes(DATA)
    assert (env_dir / "f").read_bytes() == DATA
