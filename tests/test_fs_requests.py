"""The ``/.requests`` protocol on a real mount: ask, challenge, answer, and every refusal.

Each behaviour is driven twice where it matters: from Python with plain
``os`` calls (errors checked by their exact errno), and from bash with
nothing but ``printf``, ``cat``, ``dd`` and ``b3sum`` (the exit status, and
the shell's error message carrying the strerror), since shell scripts are
the clients this interface is for.

Checks that need another uid run on a mount with ``--allow-other`` placed
under a fresh 0755 directory in /tmp (pytest's own tmp dirs are 0700), in a
forked child that drops to uid 65534 or in a bash run as that uid.

The kernel sends ``release`` asynchronously after ``close``, so checks that a
closed, failed request is gone wait a moment for it (``eventually``).
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from .helpers import ENV, ENV2
from .mount_helpers import NOBODY, Mount, eventually, in_child, require_fuse

MiB = 1 << 20
RANGES = 32  # challenge ranges per request (the store's default)
BIG = os.urandom(MiB)
SMALL = b"small content for the malformed-line checks\n"
UNKNOWN = blake3.blake3(b"content nobody ever stored").hexdigest()


# -- the protocol, as a client speaks it ------------------------------------------------------


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def parse_challenge(text: str) -> tuple[str, list[tuple[int, int]], int | None]:
    """(status, ranges, expires) of what ``cat /.requests/NAME`` printed."""
    status, ranges, expires = "", [], None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "status":
            status = rest
        elif kind == "range":
            offset, length = rest.split(" ")
            ranges.append((int(offset), int(length)))
        elif kind == "expires":
            expires = int(rest)
    return status, ranges, expires


def answer_for(challenge: str, local: bytes | Path) -> str:
    """The answer to a challenge: BLAKE3 hex of the listed ranges of the local copy, concatenated."""
    data = local.read_bytes() if isinstance(local, Path) else local
    hasher = blake3.blake3()
    for offset, length in parse_challenge(challenge)[1]:
        piece = data[offset:offset + length]
        assert len(piece) == length, f"range {offset} {length} is outside the local copy ({len(data)} bytes)"
        hasher.update(piece)
    return hasher.hexdigest()


def requests_dir(mount: Mount) -> Path:
    return mount.path / ".requests"


def control(mount: Mount, name: str) -> Path:
    return requests_dir(mount) / name


def open_control(path: Path) -> int:
    """Open a control file the way ``printf ... > path`` does."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def send(path: Path, line: str | bytes) -> None:
    """One open, one write, one close: what ``printf '%s\\n' LINE > path`` does."""
    fd = open_control(path)
    try:
        written = os.write(fd, line.encode() if isinstance(line, str) else line)
        assert written == len(line)
    finally:
        os.close(fd)


def put_line(path: str, hash_hex: str, env: str = ENV) -> str:
    return f"put {env} {path} {hash_hex}\n"


def ask(mount: Mount, name: str, path: str, hash_hex: str, env: str = ENV) -> str:
    """Ask, then read the challenge back (as ``cat`` does)."""
    send(control(mount, name), put_line(path, hash_hex, env))
    return control(mount, name).read_text()


def status_of(mount: Mount, name: str) -> str:
    return parse_challenge(control(mount, name).read_text())[0]


def errno_of(call: Callable[..., object], *args: object) -> int:
    with pytest.raises(OSError) as raised:
        call(*args)
    return raised.value.errno


def expect_errno(code: int, call: Callable[..., object], *args: object, mount: Mount | None = None) -> None:
    got = errno_of(call, *args)
    log = f"\n--- daemon log (tail) ---\n{mount.log_text()[-3000:]}" if mount is not None else ""
    assert got == code, f"expected {errno.errorcode[code]}, got {errno.errorcode.get(got, got)}{log}"


def gone(mount: Mount, name: str) -> bool:
    return name not in os.listdir(requests_dir(mount)) and not os.path.lexists(control(mount, name))


def drop(mount: Mount, name: str) -> None:
    """Remove a request if it (still) exists."""
    try:
        os.unlink(control(mount, name))
    except FileNotFoundError:
        pass


def check_ranges(ranges: list[tuple[int, int]], length: int) -> None:
    """Every range lies inside the content and has the documented size bounds."""
    shortest, longest = min(512, math.ceil(length / 2)), min(2048, length)
    assert 1 <= len(ranges) <= RANGES
    for offset, size in ranges:
        assert shortest <= size <= longest, (offset, size, length)
        assert 0 <= offset and offset + size <= length, (offset, size, length)
    assert sum(size for _, size in ranges) <= 64 * 1024


def store_file(directory: Path, name: str, data: bytes) -> str:
    (directory / name).write_bytes(data)
    return b3(data)


# -- bash with printf, cat, dd and b3sum only ----------------------------------------------------

SHELL_PRELUDE = r"""
set -u -o pipefail
answer_of() {  # answer_of REQUEST LOCAL: BLAKE3 of LOCAL's challenged ranges, concatenated in order
    cat "$1" | while read -r kind offset length; do
        if [ "$kind" = range ]; then
            dd if="$2" iflag=skip_bytes,count_bytes skip="$offset" count="$length" status=none
        fi
    done | b3sum --no-names
}
"""


def bash(script: str, *, user: int | None = None,
         **variables: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
           **{key: os.fspath(value) for key, value in variables.items()}}
    extra: dict[str, object] = {}
    if user is not None:
        extra = {"user": user, "group": user, "extra_groups": []}
    return subprocess.run(["bash", "-c", SHELL_PRELUDE + script], env=env, capture_output=True, text=True,
                          timeout=60, cwd="/", **extra)


def shell_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def shell_fails(result: subprocess.CompletedProcess[str], strerror: str) -> None:
    assert result.returncode != 0 and strerror in result.stderr, (
        f"expected a failure with {strerror!r}; exit {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


ASK = 'printf "put %s %s %s\\n" "$ENV" "$DEST" "$HASH" > "$R"\n'
ANSWER = 'printf "%s\\n" "$(answer_of "$R" "$LOCAL")" > "$R"\n'


# -- mounts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, str]]:
    """One mount for the refused asks (they leave nothing behind), with SMALL stored at ENV/src."""
    require_fuse()
    base = tmp_path_factory.mktemp("refusals")
    mounted = Mount(base / "store", base / "mnt", base / "daemon.log")
    mounted.mount()
    try:
        (mounted.path / ENV).mkdir()
        yield mounted, store_file(mounted.path / ENV, "src", SMALL)
    finally:
        mounted.release(failed=False)


# -- success -------------------------------------------------------------------------------------


def test_large_content_is_linked_after_answering_32_ranges(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    blobs, pool_bytes = mount.blob_count(), mount.pool_bytes()
    before = time.time()

    challenge = ask(mount, "big", "copies/dst", digest)
    status, ranges, expires = parse_challenge(challenge)
    assert status == "challenged"
    assert len(ranges) == RANGES
    check_ranges(ranges, len(BIG))
    assert challenge.splitlines()[0] == "status challenged"
    assert challenge.splitlines()[-1].startswith("expires ")
    assert expires is not None and before + 55 <= expires <= time.time() + 61
    assert not (env_dir / "copies" / "dst").exists()

    send(control(mount, "big"), answer_for(challenge, BIG) + "\n")
    assert control(mount, "big").read_text() == "status accepted\n"
    assert (env_dir / "copies" / "dst").read_bytes() == BIG
    assert os.getxattr(env_dir / "copies" / "dst", "user.fusestore.blake3").decode() == digest
    assert (mount.blob_count(), mount.pool_bytes()) == (blobs, pool_bytes)
    assert (env_dir / "src").read_bytes() == BIG
    assert os.listdir(requests_dir(mount)) == ["big"]


def test_small_contents_get_fewer_shorter_ranges_and_link(mount: Mount, env_dir: Path) -> None:
    for length in (1, 2, 3, 100, 511, 512, 1000):
        data = os.urandom(length)
        digest = store_file(env_dir, f"src{length}", data)
        blobs, pool_bytes = mount.blob_count(), mount.pool_bytes()
        challenge = ask(mount, f"small{length}", f"dst{length}", digest)
        status, ranges, _ = parse_challenge(challenge)
        assert status == "challenged"
        check_ranges(ranges, length)
        send(control(mount, f"small{length}"), answer_for(challenge, data) + "\n")
        assert status_of(mount, f"small{length}") == "accepted"
        assert (env_dir / f"dst{length}").read_bytes() == data
        assert os.getxattr(env_dir / f"dst{length}", "user.fusestore.blake3").decode() == digest
        assert (mount.blob_count(), mount.pool_bytes()) == (blobs, pool_bytes)


def test_empty_content_has_no_ranges_and_the_answer_is_the_hash_of_nothing(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "empty", b"")
    challenge = ask(mount, "empty", "copy-of-empty", digest)
    status, ranges, expires = parse_challenge(challenge)
    assert (status, ranges) == ("challenged", []) and expires is not None
    send(control(mount, "empty"), b3(b"") + "\n")
    assert status_of(mount, "empty") == "accepted"
    assert (env_dir / "copy-of-empty").read_bytes() == b""


def test_shell_links_with_printf_cat_dd_and_b3sum(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(BIG)
    shell_ok(bash('cat "$LOCAL" > "$SRC"', LOCAL=local, SRC=env_dir / "src"))
    blobs, pool_bytes = mount.blob_count(), mount.pool_bytes()
    out = shell_ok(bash(
        'set -e\nHASH=$(b3sum --no-names "$LOCAL")\n' + ASK + 'cat "$R"\n' + ANSWER
        + 'cat "$R"\ncat "$M/$ENV/$DEST" | b3sum --no-names\n',
        LOCAL=local, R=control(mount, "from-shell"), M=mount.path, ENV=ENV, DEST="shell/copy.bin",
    ))
    lines = out.splitlines()
    assert lines[0] == "status challenged"
    challenge = "\n".join(lines[:RANGES + 2])
    assert len(parse_challenge(challenge)[1]) == RANGES
    check_ranges(parse_challenge(challenge)[1], len(BIG))
    assert lines[RANGES + 2:] == ["status accepted", b3(BIG)]
    assert (env_dir / "shell" / "copy.bin").read_bytes() == BIG
    assert (mount.blob_count(), mount.pool_bytes()) == (blobs, pool_bytes)


def test_line_split_across_several_writes_is_one_line(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    line = put_line("split/dst", digest)
    fd = open_control(control(mount, "split"))
    try:
        for piece in (line[:3], line[3:20], line[20:-10], line[-10:-1]):
            assert os.write(fd, piece.encode()) == len(piece)
            assert status_of(mount, "split") == "new"
        assert os.write(fd, b"\n") == 1
        challenge = control(mount, "split").read_text()
        assert parse_challenge(challenge)[0] == "challenged"
        answer = answer_for(challenge, BIG) + "\n"
        for piece in (answer[:30], answer[30:]):  # the answer may come in pieces too, on the same handle
            assert os.write(fd, piece.encode()) == len(piece)
    finally:
        os.close(fd)
    assert status_of(mount, "split") == "accepted"
    assert (env_dir / "split" / "dst").read_bytes() == BIG


def test_hash_in_capital_hex_digits_is_accepted(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    challenge = ask(mount, "caps", "dst", digest.upper())
    assert parse_challenge(challenge)[0] == "challenged"
    send(control(mount, "caps"), answer_for(challenge, SMALL).upper() + "\n")
    assert status_of(mount, "caps") == "accepted"
    assert (env_dir / "dst").read_bytes() == SMALL


def test_percent_encoded_path_lands_at_the_decoded_path(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    decoded = "my dir/café €.txt"
    encoded = urllib.parse.quote(decoded, safe="/")
    assert encoded == "my%20dir/caf%C3%A9%20%E2%82%AC.txt"
    challenge = ask(mount, "encoded", encoded, digest)
    send(control(mount, "encoded"), answer_for(challenge, SMALL) + "\n")
    assert status_of(mount, "encoded") == "accepted"
    assert (env_dir / "my dir" / "café €.txt").read_bytes() == SMALL
    assert "my%20dir" not in os.listdir(env_dir)

    local = tmp_path / "local"
    local.write_bytes(SMALL)
    shell_ok(bash('set -e\n' + ASK + ANSWER, R=control(mount, "encoded-sh"), ENV=ENV, HASH=digest,
                  DEST="100%25%20sure/na%C3%AFve", LOCAL=local))
    assert status_of(mount, "encoded-sh") == "accepted"
    assert (env_dir / "100% sure" / "naïve").read_bytes() == SMALL


def test_missing_directories_of_the_destination_are_created(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    challenge = ask(mount, "deep", "a/b/c/d.txt", digest)
    send(control(mount, "deep"), answer_for(challenge, SMALL) + "\n")
    assert status_of(mount, "deep") == "accepted"
    assert (env_dir / "a" / "b" / "c").is_dir()
    assert os.listdir(env_dir / "a" / "b" / "c") == ["d.txt"]
    assert (env_dir / "a" / "b" / "c" / "d.txt").read_bytes() == SMALL


def test_a_symlink_on_the_way_is_enotdir_and_one_at_the_end_is_replaced(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    (env_dir / "real").mkdir()
    os.symlink("real", env_dir / "via")
    expect_errno(errno.ENOTDIR, send, control(mount, "through"), put_line("via/dst", digest), mount=mount)
    expect_errno(errno.ENOTDIR, send, control(mount, "file"), put_line("src/dst", digest), mount=mount)
    assert os.listdir(env_dir / "real") == []

    (env_dir / "target").write_bytes(b"the target\n")
    os.symlink("target", env_dir / "dst")
    challenge = ask(mount, "over-link", "dst", digest)
    send(control(mount, "over-link"), answer_for(challenge, SMALL) + "\n")
    assert not os.path.islink(env_dir / "dst") and (env_dir / "dst").read_bytes() == SMALL
    assert (env_dir / "target").read_bytes() == b"the target\n"

    challenge = ask(mount, "moved", "real/sub/dst", digest)  # then real/ becomes a symlink
    os.rename(env_dir / "real", env_dir / "elsewhere")
    os.symlink("elsewhere", env_dir / "real")
    expect_errno(errno.ENOTDIR, send, control(mount, "moved"), answer_for(challenge, SMALL) + "\n", mount=mount)
    assert eventually(lambda: gone(mount, "moved"))  # a failed request goes once closed
    assert os.listdir(env_dir / "elsewhere") == [] and os.path.islink(env_dir / "real")


def test_linking_into_a_new_environment_creates_it(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    challenge = ask(mount, "other-env", "x/y", digest, env=ENV2)
    send(control(mount, "other-env"), answer_for(challenge, SMALL) + "\n")
    assert status_of(mount, "other-env") == "accepted"
    assert (mount.path / ENV2 / "x" / "y").read_bytes() == SMALL


def test_linking_over_an_existing_file_replaces_its_content(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    old = os.urandom(5000)
    (env_dir / "dst").write_bytes(old)
    blobs, pool_bytes = mount.blob_count(), mount.pool_bytes()
    challenge = ask(mount, "over", "dst", digest)
    send(control(mount, "over"), answer_for(challenge, BIG) + "\n")
    assert status_of(mount, "over") == "accepted"
    assert (env_dir / "dst").read_bytes() == BIG
    assert os.getxattr(env_dir / "dst", "user.fusestore.blake3").decode() == digest
    # the old content had no other reference: its blob went, and nothing was added
    assert (mount.blob_count(), mount.pool_bytes()) == (blobs - 1, pool_bytes - len(old))


def test_kernel_caches_of_the_destination_are_dropped_by_the_link(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    old = b"old content, read and cached before the link\n"
    (env_dir / "dst").write_bytes(old)
    assert (env_dir / "dst").read_bytes() == old  # pages and attributes now cached (300 s, keep_cache)
    assert os.stat(env_dir / "dst").st_size == len(old)
    fd = os.open(env_dir / "dst", os.O_RDONLY)  # a handle opened before the link
    try:
        assert os.pread(fd, 100, 0) == old
        challenge = ask(mount, "cached", "dst", digest)
        send(control(mount, "cached"), answer_for(challenge, BIG) + "\n")
        assert os.stat(env_dir / "dst").st_size == len(BIG)
        assert (env_dir / "dst").read_bytes() == BIG
        assert os.pread(fd, 100, 0) == BIG[:100]
    finally:
        os.close(fd)
    out = shell_ok(bash('cat "$F" | b3sum --no-names', F=env_dir / "dst"))
    assert out.strip() == digest


# -- wrong answers, late answers, second answers ------------------------------------------------


def test_wrong_answer_is_a_mismatch_and_uses_up_the_request(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "wrong", "dst", digest)
    almost = bytearray(BIG)
    almost[parse_challenge(challenge)[1][-1][0]] ^= 1  # one bit off in the last range
    expect_errno(errno.EACCES, send, control(mount, "wrong"), answer_for(challenge, bytes(almost)) + "\n",
                 mount=mount)
    assert control(mount, "wrong").read_text().splitlines()[0] == "status mismatch"
    # one answer per request: the right one now comes too late
    expect_errno(errno.ETIMEDOUT, send, control(mount, "wrong"), answer_for(challenge, BIG) + "\n", mount=mount)
    assert status_of(mount, "wrong") == "mismatch"
    assert not (env_dir / "dst").exists()

    r = control(mount, "wrong-sh")
    shell_ok(bash(ASK, R=r, ENV=ENV, DEST="dst-sh", HASH=digest))
    wrong = b3(b"a guess")
    shell_fails(bash('printf "%s\\n" "$A" > "$R"', R=r, A=wrong), "Permission denied")
    assert shell_ok(bash('cat "$R"', R=r)).splitlines()[0] == "status mismatch"
    assert not (env_dir / "dst-sh").exists()


def test_second_answer_after_acceptance_times_out_and_keeps_accepted(mount: Mount, env_dir: Path,
                                                                      tmp_path: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "twice", "dst", digest)
    answer = answer_for(challenge, BIG) + "\n"
    send(control(mount, "twice"), answer)
    expect_errno(errno.ETIMEDOUT, send, control(mount, "twice"), answer, mount=mount)
    assert control(mount, "twice").read_text() == "status accepted\n"

    local = tmp_path / "local"
    local.write_bytes(BIG)
    r = control(mount, "twice-sh")
    shell_ok(bash("set -e\n" + ASK + ANSWER, R=r, ENV=ENV, DEST="dst-sh", HASH=digest, LOCAL=local))
    result = bash('printf "%s\\n" "$A" > "$R"', R=r, A=answer.strip())
    shell_fails(result, "Connection timed out")
    assert shell_ok(bash('cat "$R"', R=r)) == "status accepted\n"
    assert (env_dir / "dst").read_bytes() == BIG and (env_dir / "dst-sh").read_bytes() == BIG


def test_answer_after_expiry_times_out(mount_with: Callable[..., Mount], tmp_path: Path) -> None:
    mount = mount_with("--request-ttl", "2")
    env = mount.path / ENV
    env.mkdir()
    digest = store_file(env, "src", BIG)
    local = tmp_path / "local"
    local.write_bytes(BIG)
    before = time.time()
    challenge = ask(mount, "late", "dst", digest)
    expires = parse_challenge(challenge)[2]
    assert expires is not None and int(before) <= expires <= time.time() + 3
    r = control(mount, "late-sh")
    shell_ok(bash(ASK + 'cat "$R" > "$SAVED"', R=r, ENV=ENV, DEST="dst-sh", HASH=digest,
                  SAVED=tmp_path / "challenge"))
    time.sleep(2.3)
    assert status_of(mount, "late") == "expired"
    expect_errno(errno.ETIMEDOUT, send, control(mount, "late"), answer_for(challenge, BIG) + "\n", mount=mount)
    assert status_of(mount, "late") == "expired"
    answer = answer_for((tmp_path / "challenge").read_text(), BIG)
    shell_fails(bash('printf "%s\\n" "$A" > "$R"', R=r, A=answer), "Connection timed out")
    assert shell_ok(bash('cat "$R"', R=r)).splitlines()[0] == "status expired"
    assert sorted(os.listdir(env)) == ["src"]


def test_content_removed_before_the_answer_is_stale(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "removed", "dst", digest)
    os.unlink(env_dir / "src")
    assert mount.blob_count() == 0
    expect_errno(errno.ESTALE, send, control(mount, "removed"), answer_for(challenge, BIG) + "\n", mount=mount)
    assert status_of(mount, "removed") == "deleted"
    assert not (env_dir / "dst").exists()

    other = os.urandom(4000)
    local = tmp_path / "local"
    local.write_bytes(other)
    r = control(mount, "removed-sh")
    shell_ok(bash('set -e\ncat "$LOCAL" > "$SRC"\n' + ASK + 'rm "$SRC"\n', LOCAL=local, SRC=env_dir / "src2",
                  R=r, ENV=ENV, DEST="dst-sh", HASH=b3(other)))
    shell_fails(bash(ANSWER, R=r, LOCAL=local), "Stale file handle")
    assert shell_ok(bash('cat "$R"', R=r)).splitlines()[0] == "status deleted"
    assert sorted(os.listdir(env_dir)) == []


# -- refused asks ------------------------------------------------------------------------------


def test_unknown_hash_is_enoent_and_leaves_nothing(mount: Mount, env_dir: Path) -> None:
    store_file(env_dir, "src", SMALL)
    expect_errno(errno.ENOENT, send, control(mount, "unknown"), put_line("dst", UNKNOWN), mount=mount)
    assert eventually(lambda: gone(mount, "unknown"))
    expect_errno(errno.ENOENT, os.stat, control(mount, "unknown"))

    r = control(mount, "unknown-sh")
    shell_fails(bash(ASK, R=r, ENV=ENV, DEST="dst", HASH=UNKNOWN), "No such file or directory")
    assert eventually(lambda: gone(mount, "unknown-sh"))
    shell_fails(bash('cat "$R"', R=r), "No such file or directory")
    assert sorted(os.listdir(env_dir)) == ["src"]


def test_failed_ask_shows_why_while_open_and_is_gone_once_closed(mount: Mount, env_dir: Path) -> None:
    fd = open_control(control(mount, "refused"))
    try:
        expect_errno(errno.ENOENT, os.write, fd, put_line("dst", UNKNOWN).encode(), mount=mount)
        assert status_of(mount, "refused") == "failed"
    finally:
        os.close(fd)
    assert eventually(lambda: gone(mount, "refused"))
    expect_errno(errno.ENOENT, open, control(mount, "refused"))
    assert os.listdir(requests_dir(mount)) == []


MALFORMED = {
    "wrong-verb": "get {env} dst {hash}",
    "verb-in-capitals": "PUT {env} dst {hash}",
    "three-fields": "put {env} dst",
    "five-fields": "put {env} dst {hash} more",
    "double-space-after-verb": "put  {env} dst {hash}",
    "double-space-before-hash": "put {env} dst  {hash}",
    "leading-space": " put {env} dst {hash}",
    "trailing-space": "put {env} dst {hash} ",
    "tabs": "put\t{env}\tdst\t{hash}",
    "carriage-return": "put {env} dst {hash}\r",
    "empty-line": "",
    "hash-of-63-digits": "put {env} dst {hash63}",
    "hash-of-65-digits": "put {env} dst {hash}0",
    "hash-not-hex": "put {env} dst {hash63}g",
    "hash-with-0x": "put {env} dst 0x{hash62}",
    "env-not-a-uuid": "put not-an-environment dst {hash}",
    "env-in-capitals": "put {ENV} dst {hash}",
    "env-without-dashes": "put {env_nodash} dst {hash}",
    "env-users-dir": "put .users dst {hash}",
    "env-global-dir": "put .global dst {hash}",
    "env-dotdot": "put .. dst {hash}",
    "path-dotdot": "put {env} ../x {hash}",
    "path-dotdot-inside": "put {env} a/../../x {hash}",
    "path-absolute": "put {env} /x {hash}",
    "path-dot": "put {env} ./x {hash}",
    "path-empty-component": "put {env} a//b {hash}",
    "path-trailing-slash": "put {env} a/ {hash}",
    "path-encoded-dotdot": "put {env} %2E%2E/x {hash}",
    "path-encoded-nul": "put {env} a%00b {hash}",
    "path-bad-percent-escape": "put {env} a%zzb {hash}",
    "path-truncated-percent-escape": "put {env} ab%2 {hash}",
    "path-unencoded-byte": "put {env} a+b {hash}",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_ask_is_einval_and_leaves_nothing(quiet_mount: tuple[Mount, str], case: str) -> None:
    mount, digest = quiet_mount
    line = MALFORMED[case].format(env=ENV, ENV=ENV.upper(), env_nodash=ENV.replace("-", ""), hash=digest,
                                  hash63=digest[:63], hash62=digest[:62]) + "\n"
    name = f"bad-{case}"
    try:
        expect_errno(errno.EINVAL, send, control(mount, name), line, mount=mount)
        assert eventually(lambda: gone(mount, name))
        assert sorted(os.listdir(mount.path / ENV)) == ["src"]
    finally:
        drop(mount, name)  # a wrongly accepted ask must not fill the shared mount


BINARY = {
    "high-bytes": b"\xff\xfe\xfd garbage \x80\x81\n",
    "control-bytes": b"\x00\x01\x02\x03\n",
    "utf8-path-not-encoded": "put {env} café {hash}\n",
    "latin1-path": b"put {env} caf\xe9 {hash}\n",
}


@pytest.mark.parametrize("case", list(BINARY))
def test_binary_garbage_is_einval(quiet_mount: tuple[Mount, str], case: str) -> None:
    mount, digest = quiet_mount
    raw = BINARY[case]
    line = raw.encode() if isinstance(raw, str) else raw
    line = line.replace(b"{env}", ENV.encode()).replace(b"{hash}", digest.encode())
    try:
        expect_errno(errno.EINVAL, send, control(mount, f"bin-{case}"), line, mount=mount)
        assert eventually(lambda: gone(mount, f"bin-{case}"))
        assert sorted(os.listdir(mount.path / ENV)) == ["src"]
    finally:
        drop(mount, f"bin-{case}")


def test_line_longer_than_8192_bytes_is_einval(quiet_mount: tuple[Mount, str]) -> None:
    mount, _ = quiet_mount
    expect_errno(errno.EINVAL, send, control(mount, "long"), b"p" * 8193, mount=mount)
    assert eventually(lambda: gone(mount, "long"))

    # in pieces: the write that takes the line past 8192 bytes fails
    fd = open_control(control(mount, "long-pieces"))
    try:
        assert os.write(fd, b"put " + b"x" * 4092) == 4096
        assert os.write(fd, b"y" * 4096) == 4096  # 8192 bytes: still a possible line
        expect_errno(errno.EINVAL, os.write, fd, b"z", mount=mount)
        assert status_of(mount, "long-pieces") == "failed"
    finally:
        os.close(fd)
    assert eventually(lambda: gone(mount, "long-pieces"))

    r = control(mount, "long-sh")
    shell_fails(bash('dd if=/dev/zero bs=9000 count=1 of="$R" status=none', R=r), "Invalid argument")
    assert eventually(lambda: gone(mount, "long-sh"))


@pytest.mark.parametrize("line, label", [
    ('printf "get %s %s %s\\n" "$ENV" dst "$HASH"', "wrong verb"),
    ('printf "put %s  %s %s\\n" "$ENV" dst "$HASH"', "double space"),
    ('printf "put %s %s\\n" "$ENV" "$HASH"', "three fields"),
    ('printf "put %s %s %s\\n" not-a-uuid dst "$HASH"', "bad env"),
    ('printf "put %s %s %s\\n" "$ENV" ../x "$HASH"', "path with .."),
    ('printf "put %s %s %s\\n" "$ENV" /etc/passwd "$HASH"', "absolute path"),
    ('printf "put %s %s %.63s\\n" "$ENV" dst "$HASH"', "63 hex digits"),
    ('printf "put %s %s %sq\\n" "$ENV" dst "$HASH"', "hash with a non-hex digit"),
])
def test_malformed_ask_from_the_shell_fails_with_invalid_argument(quiet_mount: tuple[Mount, str], line: str,
                                                                  label: str) -> None:
    mount, digest = quiet_mount
    name = "sh-" + label.replace(" ", "-").replace(".", "dot")
    try:
        result = bash(line + ' > "$R"\n', R=control(mount, name), ENV=ENV, HASH=digest)
        shell_fails(result, "Invalid argument")
        assert eventually(lambda: gone(mount, name))
        shell_fails(bash('cat "$R"', R=control(mount, name)), "No such file or directory")
    finally:
        drop(mount, name)


# -- request names ------------------------------------------------------------------------------


def test_request_names_outside_the_allowed_set_are_einval(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    line = put_line("dst", digest)
    for name in ("with space", "x" * 65, "star*", "tab\tname", "ü"):
        expect_errno(errno.EINVAL, open_control, control(mount, name), mount=mount)
        expect_errno(errno.EINVAL, os.stat, control(mount, name))
    shell_fails(bash('printf "put %s %s %s\\n" "$ENV" dst "$HASH" > "$M/.requests/a b"', M=mount.path, ENV=ENV,
                     HASH=digest), "Invalid argument")
    shell_fails(bash('printf "put %s %s %s\\n" "$ENV" dst "$HASH" > "$M/.requests/$(printf "%065d" 0)"',
                     M=mount.path, ENV=ENV, HASH=digest), "Invalid argument")
    assert os.listdir(requests_dir(mount)) == []
    # the extremes that are allowed
    for name in ("x" * 64, "A.z_0-9", "..."):
        send(control(mount, name), line)
        assert status_of(mount, name) == "challenged"
    assert sorted(os.listdir(requests_dir(mount))) == sorted(["x" * 64, "A.z_0-9", "..."])


def test_request_names_with_a_slash_or_dotdot_create_nothing(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    line = put_line("dst", digest)
    expect_errno(errno.ENOENT, send, requests_dir(mount) / "sub" / "name", line, mount=mount)
    with pytest.raises(OSError):  # the kernel resolves '..' to the root directory
        send(requests_dir(mount) / "..", line)
    with pytest.raises(OSError):
        send(requests_dir(mount) / ".", line)
    result = bash('printf "put %s %s %s\\n" "$ENV" dst "$HASH" > "$M/.requests/a/b"', M=mount.path, ENV=ENV,
                  HASH=digest)
    shell_fails(result, "No such file or directory")
    result = bash('printf "put %s %s %s\\n" "$ENV" dst "$HASH" > "$M/.requests/.."', M=mount.path, ENV=ENV,
                  HASH=digest)
    assert result.returncode != 0, result
    assert os.listdir(requests_dir(mount)) == []
    assert sorted(os.listdir(env_dir)) == ["src"]
    assert sorted(os.listdir(mount.path)) == sorted([".global", ".users", ".requests", ".stats", ENV])


# -- the directory, removal, limits ----------------------------------------------------------------


def test_rm_drops_a_request(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "dropped", "dst", digest)
    ask(mount, "kept", "dst2", digest)
    assert sorted(os.listdir(requests_dir(mount))) == ["dropped", "kept"]
    os.unlink(control(mount, "dropped"))
    assert os.listdir(requests_dir(mount)) == ["kept"]
    expect_errno(errno.ENOENT, os.stat, control(mount, "dropped"))
    expect_errno(errno.ENOENT, os.unlink, control(mount, "dropped"))
    # the name is free again: an answer written there now is a new, malformed ask
    expect_errno(errno.EINVAL, send, control(mount, "dropped"), answer_for(challenge, BIG) + "\n", mount=mount)
    assert not (env_dir / "dst").exists()

    local = tmp_path / "local"
    local.write_bytes(BIG)
    out = shell_ok(bash('set -e\nrm "$R"\nls -A "$M/.requests"\n' + ASK + ANSWER + 'cat "$R"',
                        R=control(mount, "kept"), M=mount.path, ENV=ENV, DEST="dst3", HASH=digest, LOCAL=local))
    assert out.splitlines()[-1] == "status accepted"
    assert "kept" not in out.splitlines()[:-1]
    assert (env_dir / "dst3").read_bytes() == BIG and not (env_dir / "dst2").exists()


def test_listing_shows_each_request_of_the_caller(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", SMALL)
    for name in ("one", "two", "three"):
        ask(mount, name, f"dst-{name}", digest)
    assert sorted(os.listdir(requests_dir(mount))) == ["one", "three", "two"]
    out = shell_ok(bash('cd "$M/.requests"\nfor f in *; do read -r line < "$f"; printf "%s: %s\\n" "$f" "$line"; done',
                        M=mount.path))
    assert out.splitlines() == ["one: status challenged", "three: status challenged", "two: status challenged"]
    st = os.stat(control(mount, "one"))
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)


def test_third_open_request_is_ebusy(mount_with: Callable[..., Mount], tmp_path: Path) -> None:
    mount = mount_with("--max-requests-per-uid", "2")
    env = mount.path / ENV
    env.mkdir()
    digest = store_file(env, "src", BIG)
    first = ask(mount, "first", "d1", digest)
    ask(mount, "second", "d2", digest)
    expect_errno(errno.EBUSY, send, control(mount, "third"), put_line("d3", digest), mount=mount)
    assert eventually(lambda: gone(mount, "third"))
    shell_fails(bash(ASK, R=control(mount, "third-sh"), ENV=ENV, DEST="d3", HASH=digest),
                "Device or resource busy")
    assert eventually(lambda: gone(mount, "third-sh"))
    assert sorted(os.listdir(requests_dir(mount))) == ["first", "second"]
    # an answered request is no longer open: room for one more
    send(control(mount, "first"), answer_for(first, BIG) + "\n")
    third = ask(mount, "third", "d3", digest)
    assert parse_challenge(third)[0] == "challenged"
    send(control(mount, "third"), answer_for(third, BIG) + "\n")
    assert (env / "d3").read_bytes() == BIG


def test_expired_requests_no_longer_count_as_open(mount_with: Callable[..., Mount]) -> None:
    mount = mount_with("--request-ttl", "2", "--max-requests-per-uid", "1")
    env = mount.path / ENV
    env.mkdir()
    digest = store_file(env, "src", BIG)
    ask(mount, "first", "d1", digest)
    expect_errno(errno.EBUSY, send, control(mount, "second"), put_line("d2", digest), mount=mount)
    time.sleep(2.3)
    assert status_of(mount, "first") == "expired"
    challenge = ask(mount, "third", "d3", digest)
    assert parse_challenge(challenge)[0] == "challenged"
    send(control(mount, "third"), answer_for(challenge, BIG) + "\n")
    assert (env / "d3").read_bytes() == BIG


def test_put_line_into_a_challenged_request_is_eexist(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "again", "dst", digest)
    expect_errno(errno.EEXIST, send, control(mount, "again"), put_line("other", digest), mount=mount)
    shell_fails(bash(ASK, R=control(mount, "again"), ENV=ENV, DEST="other", HASH=digest), "File exists")
    assert control(mount, "again").read_text() == challenge  # still the same challenge, still answerable
    send(control(mount, "again"), answer_for(challenge, BIG) + "\n")
    assert (env_dir / "dst").read_bytes() == BIG and not (env_dir / "other").exists()


def test_put_line_into_an_answered_request_is_eexist(mount: Mount, env_dir: Path) -> None:
    digest = store_file(env_dir, "src", BIG)
    challenge = ask(mount, "done", "dst", digest)
    send(control(mount, "done"), answer_for(challenge, BIG) + "\n")
    expect_errno(errno.EEXIST, send, control(mount, "done"), put_line("other", digest), mount=mount)
    shell_fails(bash(ASK, R=control(mount, "done"), ENV=ENV, DEST="other", HASH=digest), "File exists")
    assert status_of(mount, "done") == "accepted"
    assert not (env_dir / "other").exists()


# -- other users ----------------------------------------------------------------------------------


def shared_mount(mount_with: Callable[..., Mount]) -> tuple[Mount, Path, str, Path]:
    """An --allow-other mount: root's environment holding BIG, and an environment anyone may write."""
    mount = mount_with("--allow-other", shared=True)
    root_env = mount.path / ENV
    root_env.mkdir()
    digest = store_file(root_env, "src", BIG)
    open_env = mount.path / ENV2
    open_env.mkdir()
    open_env.chmod(0o777)
    return mount, root_env, digest, open_env


def test_other_uid_neither_sees_nor_answers_a_request(mount_with: Callable[..., Mount]) -> None:
    mount, root_env, digest, open_env = shared_mount(mount_with)
    local = mount.path.parent / "local.bin"  # readable by uid 65534
    local.write_bytes(BIG)
    local.chmod(0o644)
    challenge = ask(mount, "mine", "dst", digest)
    reqs, mine = requests_dir(mount), control(mount, "mine")

    def looks() -> bytes:
        listing = os.listdir(reqs)
        codes = [errno_of(os.stat, mine), errno_of(os.open, mine, os.O_RDONLY),
                 errno_of(os.open, mine, os.O_WRONLY)]
        return repr((listing, codes)).encode()

    code, out = in_child(looks, uid=NOBODY)
    assert code == 0
    assert out.decode() == repr(([], [errno.ENOENT] * 3))

    assert shell_ok(bash('ls -A "$D"', user=NOBODY, D=reqs)) == ""
    shell_fails(bash('cat "$R"', user=NOBODY, R=mine), "No such file or directory")
    # writing the right answer under that name only makes a (malformed) ask of its own
    shell_fails(bash('printf "%s\\n" "$A" > "$R"', user=NOBODY, R=mine, A=answer_for(challenge, BIG)),
                "Invalid argument")
    assert control(mount, "mine").read_text() == challenge

    # the other uid makes and answers its own request where it may write
    out = shell_ok(bash('set -e\nHASH=$(b3sum --no-names "$LOCAL")\n' + ASK + ANSWER + 'cat "$R"\nls -A "$D"\n',
                        user=NOBODY, R=control(mount, "theirs"), D=reqs, ENV=ENV2, DEST="sub/copy", LOCAL=local))
    assert out.splitlines() == ["status accepted", "theirs"]
    assert (open_env / "sub" / "copy").read_bytes() == BIG
    assert os.listdir(reqs) == ["mine"]
    expect_errno(errno.ENOENT, os.stat, control(mount, "theirs"))
    expect_errno(errno.ENOENT, open, control(mount, "theirs"))

    # and root still answers its own
    send(mine, answer_for(challenge, BIG) + "\n")
    assert status_of(mount, "mine") == "accepted"
    assert (root_env / "dst").read_bytes() == BIG


def test_same_name_for_two_uids_is_two_requests(mount_with: Callable[..., Mount]) -> None:
    mount, root_env, digest, open_env = shared_mount(mount_with)
    name = control(mount, "req")
    root_challenge = ask(mount, "req", "dst", digest)

    def ask_and_answer() -> bytes:
        send(name, put_line("theirs", digest, env=ENV2))
        challenge = name.read_text()
        send(name, answer_for(challenge, BIG) + "\n")
        return name.read_bytes()

    code, out = in_child(ask_and_answer, uid=NOBODY)
    assert (code, out) == (0, b"status accepted\n")
    assert name.read_text() == root_challenge
    send(name, answer_for(root_challenge, BIG) + "\n")
    assert status_of(mount, "req") == "accepted"
    assert (open_env / "theirs").read_bytes() == BIG and (root_env / "dst").read_bytes() == BIG


def test_other_uid_may_not_link_where_it_may_not_write(mount_with: Callable[..., Mount]) -> None:
    mount = mount_with("--allow-other", shared=True)
    root_env = mount.path / ENV
    root_env.mkdir()
    root_env.chmod(0o755)
    digest = store_file(root_env, "src", BIG)
    (root_env / "existing").write_bytes(b"root's file\n")
    (root_env / "sub").mkdir()

    def refused(name: str, path: str) -> Callable[[], bytes]:
        def action() -> bytes:
            send(control(mount, name), put_line(path, digest))
            return b"asked"
        return action

    for number, path in enumerate(("new-file", "existing", "sub/new", "new-dir/file")):
        code, out = in_child(refused(f"denied{number}", path), uid=NOBODY)
        assert code == errno.EACCES, f"{path}: exit {code}, {out!r}\n{mount.log_text()[-3000:]}"
    shell_fails(bash(ASK, user=NOBODY, R=control(mount, "denied-sh"), ENV=ENV, DEST="new-file", HASH=digest),
                "Permission denied")
    listing = lambda: in_child(lambda: repr(os.listdir(requests_dir(mount))).encode(), uid=NOBODY)  # noqa: E731
    assert eventually(lambda: listing() == (0, b"[]"))
    assert sorted(os.listdir(root_env)) == ["existing", "src", "sub"]
    assert (root_env / "existing").read_bytes() == b"root's file\n"
    assert os.listdir(root_env / "sub") == []


def test_finished_and_forgotten_requests_disappear_by_themselves(mount_with: Callable[..., Mount]) -> None:
    """Answered, expired and never-asked requests go a request lifetime after they ended."""
    mount = mount_with("--request-ttl", "1")
    (mount.path / ENV).mkdir()
    digest = store_file(mount.path / ENV, "src", BIG)
    challenge = ask(mount, "answered", "dst", digest)
    send(control(mount, "answered"), answer_for(challenge, BIG) + "\n")
    ask(mount, "unanswered", "other", digest)
    control(mount, "never-asked").touch()
    assert sorted(os.listdir(requests_dir(mount))) == ["answered", "never-asked", "unanswered"]
    assert eventually(lambda: os.listdir(requests_dir(mount)) == [], timeout=6)
    assert (mount.path / ENV / "dst").read_bytes() == BIG
