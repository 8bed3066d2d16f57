"""Tenants of one mount through ``/.requests`` and ``/.stats``: real mounts, clients as other uids.

Each mount has ``--allow-other`` and lives under a fresh 0755 directory in
/tmp (``mount_with(shared=True)``). Alice (uid 3001) and Bob (uid 3002)
each make their own environment and write their own content as
themselves, in forked children (``in_child``) or in subprocesses; root
only mounts and checks. The same rules, driven by a clock in process, are
in ``test_tenancy.py``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from fusestore.client import link as client
from fusestore.client import wire

from .helpers import ENV, ENV2
from .mount_helpers import FUSESTORE, Child, Mount, in_child

ALICE, BOB = 3001, 3002
LINK_SH = Path(__file__).parent.parent / "scripts" / "link.sh"
ALICES = os.urandom(300_000)
BOBS = os.urandom(200_000)
UNKNOWN = blake3.blake3(b"content nobody ever stored").hexdigest()


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass
class Tenants:
    mount: Mount
    local: Path  # a directory both uids may read and write, outside the mount

    @property
    def requests(self) -> Path:
        return self.mount.path / wire.REQUESTS_DIR

    def copy_of(self, data: bytes) -> Path:
        path = self.local / b3(data)
        path.write_bytes(data)
        path.chmod(0o644)
        return path


def tenants(mount_with: Callable[..., Mount], *flags: str) -> Tenants:
    """A shared mount where Alice owns ENV holding ALICES and Bob owns ENV2 holding BOBS."""
    mount = mount_with("--allow-other", *flags, shared=True)
    local = mount.path.parent / "local"
    local.mkdir()
    local.chmod(0o777)
    for uid, env, data in ((ALICE, ENV, ALICES), (BOB, ENV2, BOBS)):
        def make(env: str = env, data: bytes = data) -> None:
            os.mkdir(mount.path / env, 0o755)
            (mount.path / env / "own").write_bytes(data)
        assert in_child(make, uid=uid) == (0, b"")
    assert (os.stat(mount.path / ENV).st_uid, os.stat(mount.path / ENV2).st_uid) == (ALICE, BOB)
    return Tenants(mount, local)


def ask(requests: Path, name: str, env: str, path: str, digest: str) -> Callable[[], bytes]:
    """An action for ``in_child``: ask, and return what the request file then shows."""
    def action() -> bytes:
        fd = os.open(requests / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (wire.ask_line(env, path, digest) + "\n").encode())
            return os.pread(fd, 65536, 0)
        finally:
            os.close(fd)
    return action


def answer_of(challenge: bytes, data: bytes) -> bytes:
    hasher = blake3.blake3()
    for offset, length in wire.parse_status(challenge.decode()).ranges:
        hasher.update(data[offset:offset + length])
    return (hasher.hexdigest() + "\n").encode()


def linked_by(tenants: Tenants, env: str, path: str, data: bytes) -> Callable[[], bytes]:
    """An action for ``in_child``: ``fusestore link``'s library, timed; returns 'KIND SECONDS'."""
    local = tenants.copy_of(data)

    def action() -> bytes:
        start = time.monotonic()
        outcome = client.link(tenants.mount.path, env, path, local)
        return f"{outcome.kind} {time.monotonic() - start:.3f}".encode()
    return action


def command(*argv: str | Path) -> Callable[[], bytes]:
    """An action for ``in_child``: run ``fusestore ARGV`` in the child; returns 'STATUS\\0STDOUT\\0STDERR'."""
    def action() -> bytes:
        from fusestore.cli import main

        out, err = io.StringIO(), io.StringIO()
        status = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(arg) for arg in argv])
            except SystemExit as exc:
                status = int(exc.code or 0)
        return f"{status}\0{out.getvalue()}\0{err.getvalue()}".encode()
    return action


def run_as(uid: int, *argv: str | Path) -> tuple[int, str, str]:
    code, raw = in_child(command(*argv), uid=uid)
    assert code == 0, raw
    status, out, err = raw.decode().split("\0")
    return int(status), out, err


def fsck_is_clean(mount: Mount) -> None:
    mount.umount()
    result = subprocess.run([*FUSESTORE, "fsck", str(mount.store)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- seeing and answering ----------------------------------------------------------------------------


def test_another_uid_can_neither_see_nor_answer_a_request(mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with)
    code, challenge = in_child(ask(t.requests, "alices", ENV, "copy", b3(ALICES)), uid=ALICE)
    assert code == 0 and wire.parse_status(challenge.decode()).state == "challenged"
    right_answer = answer_of(challenge, ALICES)

    def bob_tries() -> bytes:
        seen = [os.listdir(t.requests)]
        for call in (lambda: os.stat(t.requests / "alices"), lambda: os.open(t.requests / "alices", os.O_RDONLY)):
            try:
                call()
                seen.append("visible")
            except OSError as exc:
                seen.append(errno.errorcode[exc.errno or 0])
        fd = os.open(t.requests / "alices", os.O_WRONLY | os.O_CREAT, 0o600)  # Bob's own file of that name
        try:
            os.write(fd, right_answer)
        except OSError as exc:
            seen.append(errno.errorcode[exc.errno or 0])
        finally:
            os.close(fd)
        return repr(seen).encode()

    assert in_child(bob_tries, uid=BOB) == (0, repr([[], "ENOENT", "ENOENT", "EINVAL"]).encode())

    def alice_answers() -> bytes:
        with open(t.requests / "alices", "r+b", buffering=0) as request:
            request.write(right_answer)
            request.seek(0)
            return request.read()

    assert in_child(alice_answers, uid=ALICE) == (0, b"status accepted\n")
    assert (t.mount.path / ENV / "copy").read_bytes() == ALICES


# -- --requests-same-owner ------------------------------------------------------------------------------


def test_same_owner_hides_another_tenants_content_and_finds_the_callers_own(
        mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with, "--requests-same-owner")
    with_hash = ask(t.requests, "theirs", ENV2, "copy", b3(ALICES))
    assert in_child(with_hash, uid=BOB)[0] == errno.ENOENT

    def status_of_refusal(digest: str) -> Callable[[], bytes]:
        def action() -> bytes:
            fd = os.open(t.requests / f"r-{digest[:8]}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, (wire.ask_line(ENV2, "copy", digest) + "\n").encode())
            except FileNotFoundError:
                return os.pread(fd, 65536, 0)
            finally:
                os.close(fd)
            return b"not refused"
        return action

    theirs = in_child(status_of_refusal(b3(ALICES)), uid=BOB)[1].decode()
    unknown = in_child(status_of_refusal(UNKNOWN), uid=BOB)[1].decode()
    assert theirs.replace(b3(ALICES), "HASH") == unknown.replace(UNKNOWN, "HASH")
    assert unknown == f"status failed\nerror no resource {UNKNOWN}\n"

    # fusestore link exits 3 (upload it), as for content nobody stored
    assert in_child(linked_by(t, ENV2, "copy", ALICES), uid=BOB)[1].split()[0] == b"missing"
    assert in_child(linked_by(t, ENV2, "again", BOBS), uid=BOB)[1].split()[0] == b"linked"
    assert in_child(linked_by(t, ENV, "again", ALICES), uid=ALICE)[1].split()[0] == b"linked"
    assert (t.mount.path / ENV2 / "again").read_bytes() == BOBS
    assert not (t.mount.path / ENV2 / "copy").exists()


# -- /.stats --------------------------------------------------------------------------------------------


def stats_as(t: Tenants, uid: int) -> dict[str, object]:
    code, raw = in_child(lambda: (t.mount.path / ".stats").read_bytes(), uid=uid)
    assert code == 0, raw
    result: dict[str, object] = json.loads(raw)
    return result


def test_stats_list_only_the_readers_environments(mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with)
    alice, bob, root = stats_as(t, ALICE), stats_as(t, BOB), stats_as(t, 0)
    assert alice["per_environment"] == {ENV: len(ALICES)} and bob["per_environment"] == {ENV2: len(BOBS)}
    assert root["per_environment"] == {ENV: len(ALICES), ENV2: len(BOBS)}
    for figures in (alice, bob):
        assert {key: value for key, value in figures.items() if key != "per_environment"} == {
            key: value for key, value in root.items() if key != "per_environment"}
    assert root["files"] == 2 and root["environments"] == 2


def test_restricted_requests_leave_only_the_readers_environments(mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with, "--requests-same-owner")
    assert stats_as(t, ALICE) == {"per_environment": {ENV: len(ALICES)}}
    assert stats_as(t, 0)["logical_bytes"] == len(ALICES) + len(BOBS)
    status, out, err = run_as(ALICE, "stats", t.mount.path)
    assert status == 0, err
    assert "shown to root only" in out and ENV in out and ENV2 not in out


# -- --requests-off -------------------------------------------------------------------------------------


def test_requests_off_removes_the_directory_and_link_copies_instead(mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with, "--requests-off")
    assert wire.REQUESTS_DIR not in os.listdir(t.mount.path)
    for call in (os.stat, os.listdir):
        with pytest.raises(FileNotFoundError):
            call(t.requests)
    local = t.copy_of(ALICES)

    status, _, err = run_as(ALICE, "link", t.mount.path, ENV, "linked", local)
    assert status == 1 and "requests are off" in err and len(err.splitlines()) == 1
    shell = subprocess.run(["bash", str(LINK_SH), str(t.mount.path), ENV, "linked", str(local)], capture_output=True,
                           text=True, timeout=60, user=ALICE, group=ALICE, extra_groups=[], cwd="/")
    assert shell.returncode == 1 and "requests are off" in shell.stderr, shell.stderr
    assert not (t.mount.path / ENV / "linked").exists()
    status, out, err = run_as(ALICE, "link", t.mount.path, ENV, "linked", local, "--upload-if-missing")
    assert status == 0 and "requests are off" in out, err
    assert (t.mount.path / ENV / "linked").read_bytes() == ALICES
    assert stats_as(t, BOB) == {"per_environment": {ENV2: len(BOBS)}}
    assert "files" in stats_as(t, 0)


# -- brute force ------------------------------------------------------------------------------------------

def flood(requests: Path, known: str, seconds: float) -> Callable[[], bytes]:
    """An action for ``in_child``: ask and guess as fast as possible; returns how each step went, as JSON."""
    def action() -> bytes:
        counts: dict[str, int] = {}

        def note(what: str) -> None:
            counts[what] = counts.get(what, 0) + 1

        end, number = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            number += 1
            path = requests / f"flood{number}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    os.write(fd, (wire.ask_line(ENV, f"guess{number}", known if number % 2 else UNKNOWN)
                                  + "\n").encode())
                except OSError as exc:
                    note("ask " + errno.errorcode[exc.errno or 0])
                    continue
                note("ask ok")
                for attempt in ("answer", "again"):
                    try:
                        os.write(fd, b"0" * 64 + b"\n")
                        note(attempt + " ok")
                    except OSError as exc:
                        note(attempt + " " + errno.errorcode[exc.errno or 0])
            finally:
                os.close(fd)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return json.dumps(counts).encode()
    return action


def test_brute_force_hits_the_caps_and_does_not_slow_another_uid(mount_with: Callable[..., Mount]) -> None:
    t = tenants(mount_with, "--max-requests-per-uid", "4", "--request-rate", "30")
    held = [in_child(ask(t.requests, f"held{n}", ENV, f"held{n}", b3(ALICES)), uid=ALICE)[0] for n in range(4)]
    assert held == [0] * 4
    for digest in (b3(ALICES), UNKNOWN, "not-a-hash"):  # capped: refused before anything is looked up
        assert in_child(ask(t.requests, "fifth", ENV, "fifth", digest), uid=ALICE)[0] == errno.EBUSY

    def drop_held() -> None:
        for n in range(4):
            os.unlink(t.requests / f"held{n}")  # removed: no longer open

    assert in_child(drop_held, uid=ALICE) == (0, b"")

    flooding = Child(flood(t.requests, b3(ALICES), 4.0), uid=ALICE)
    try:
        time.sleep(0.5)  # well into the flood: Alice is capped by now
        exchanges = [in_child(linked_by(t, ENV2, f"copy{n}", BOBS), uid=BOB) for n in range(5)]
        still_flooding = flooding.running()
    finally:
        code, out = flooding.wait()
    assert code == 0 and still_flooding
    counts = json.loads(out)
    for code, outcome in exchanges:
        kind, seconds = outcome.split()
        assert (code, kind) == (0, b"linked") and float(seconds) < 1.0, exchanges
    assert counts["ask ok"] + counts["ask ENOENT"] == 30 - 4  # the four held asks counted, refused ones not
    assert counts["ask ok"] == counts["answer EACCES"] == counts["again ETIMEDOUT"]  # each guess ends its request
    assert counts["ask EBUSY"] > 0 and set(counts) == {"ask ok", "ask ENOENT", "answer EACCES", "again ETIMEDOUT",
                                                      "ask EBUSY"}
    assert not any(name.startswith("guess") for name in os.listdir(t.mount.path / ENV))
    assert in_child(ask(t.requests, "later", ENV, "later", b3(ALICES)), uid=ALICE)[0] == errno.EBUSY
    assert sorted(os.listdir(t.mount.path / ENV2)) == ["copy0", "copy1", "copy2", "copy3", "copy4", "own"]
    fsck_is_clean(t.mount)
