"""The ``/.requests`` subtree driven through the virtual-file interface, in process: no mount, no kernel.

A real store in a temporary directory and a clock moved by hand, so every
errno of the protocol is checked exactly and each test takes milliseconds.
The same behaviours on a real mount are in ``test_fs_requests.py``.
"""

from __future__ import annotations

import errno
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pyfuse3
import pytest

from fusestore import Store
from fusestore.client import wire
from fusestore.fs.requests_dir import REQUESTS_DIR, REQUESTS_INO, Requests, RequestsDir
from fusestore.fs.virtual import (
    AttributeChange,
    VirtualError,
    VirtualFiles,
    VirtualHandle,
    VirtualTree,
    inode_range,
)
from fusestore.store.attributes import Attributes
from fusestore.store.owners import Owner
from fusestore.store.tenancy import Tenancy

from .helpers import ENV, ManualClock, put, read

ROOT = pyfuse3.ROOT_INODE
ME = Owner(0, 0)
OTHER = Owner(65534, 65534)
DATA = random.Random(11).randbytes(50_000)
UNKNOWN = blake3.blake3(b"content nobody stored").hexdigest()
MAX_OPEN = 2  # open (challenged) requests per uid


@dataclass
class Setup:
    store: Store
    tree: RequestsDir
    clock: ManualClock
    digest: str  # of DATA, stored at ENV/src
    linked: list[tuple[str, str]]


@pytest.fixture
def setup(store_path: Path, clock: ManualClock) -> Iterator[Setup]:
    linked: list[tuple[str, str]] = []
    with Store.open(store_path, clock=clock, tenancy=Tenancy(max_requests_per_uid=MAX_OPEN)) as store:
        requests = Requests(store, on_linked=lambda env, path: linked.append((env, path)))
        yield Setup(store, RequestsDir(requests), clock, put(store, "src", DATA), linked)


def fails(code: int, call: Callable[..., object], *args: object) -> VirtualError:
    with pytest.raises(VirtualError) as raised:
        call(*args)
    assert raised.value.errno == code, (errno.errorcode.get(raised.value.errno), str(raised.value))
    return raised.value


def status(handle: VirtualHandle) -> wire.Status:
    return wire.parse_status(handle.read(0, 1 << 20).decode())


def ask_line(path: str, digest: str) -> bytes:
    return (wire.ask_line(ENV, path, digest) + "\n").encode()


def answer_line(challenge: wire.Status, data: bytes = DATA) -> bytes:
    hasher = blake3.blake3()
    for offset, length in challenge.ranges:
        hasher.update(data[offset:offset + length])
    return (hasher.hexdigest() + "\n").encode()


def ask(setup: Setup, name: bytes, path: str = "dst", caller: Owner = ME) -> tuple[VirtualHandle, wire.Status]:
    """create, write the ask: the open handle and the challenge it shows."""
    handle, _ = setup.tree.create(REQUESTS_INO, name, caller)
    line = ask_line(path, setup.digest)
    assert handle.write(0, line) == len(line)
    challenge = status(handle)
    assert challenge.state == "challenged"
    return handle, challenge


def names(setup: Setup, caller: Owner = ME) -> list[bytes]:
    return [name for name, _ in setup.tree.listing(REQUESTS_INO, caller)]


# -- the protocol ---------------------------------------------------------------------------------


def test_ask_challenge_answer_links_the_content(setup: Setup) -> None:
    handle, challenge = ask(setup, b"r1", "docs/my file.txt")
    assert len(challenge.ranges) == 32
    assert challenge.expires == int(setup.clock.now + 60)
    attributes = setup.tree.lookup(REQUESTS_INO, b"r1", ME)
    assert (attributes.mode, attributes.uid, attributes.nlink) == (stat.S_IFREG | 0o600, 0, 1)
    assert attributes.size == len(handle.read(0, 1 << 20))

    line = answer_line(challenge)
    assert handle.write(len(line), line) == len(line)
    assert handle.read(0, 100) == b"status accepted\n"
    assert handle.read(7, 4) == b"acce"
    assert setup.linked == [(ENV, "docs/my file.txt")]
    assert read(setup.store, "docs/my file.txt") == DATA
    handle.release()
    assert names(setup) == [b"r1"]  # an answered request stays readable for a while


def test_wrong_answer_is_eacces_then_any_answer_is_etimedout(setup: Setup) -> None:
    handle, challenge = ask(setup, b"wrong")
    fails(errno.EACCES, handle.write, 0, answer_line(challenge, b"\0" * len(DATA)))
    assert status(handle).state == "mismatch"
    fails(errno.ETIMEDOUT, handle.write, 0, answer_line(challenge))
    assert status(handle).state == "mismatch"
    assert setup.linked == []


def test_answer_after_expiry_is_etimedout(setup: Setup) -> None:
    handle, challenge = ask(setup, b"late")
    setup.clock.advance(59.9)
    assert status(handle).state == "challenged"
    setup.clock.advance(0.1)
    assert status(handle) == wire.Status("expired")
    fails(errno.ETIMEDOUT, handle.write, 0, answer_line(challenge))
    assert status(handle).state == "expired"
    assert setup.linked == []


def test_content_removed_before_the_answer_is_estale(setup: Setup) -> None:
    handle, challenge = ask(setup, b"removed")
    setup.store.remove_for_environment(ENV, "src")
    fails(errno.ESTALE, handle.write, 0, answer_line(challenge))
    assert status(handle).state == "deleted"


def test_line_split_over_several_writes_is_one_line(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"split", ME)
    line = ask_line("split/dst", setup.digest)
    for piece in (line[:3], line[3:40], line[40:-1]):
        assert handle.write(0, piece) == len(piece)
        assert status(handle).state == "new"
    assert handle.write(0, b"\n") == 1
    challenge = status(handle)
    assert challenge.state == "challenged"
    answer = answer_line(challenge)
    handle.write(0, answer[:30])
    assert status(handle).state == "challenged"
    handle.write(0, answer[30:])
    assert status(handle).state == "accepted"
    assert read(setup.store, "split/dst") == DATA


def test_line_longer_than_max_line_is_einval(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"long", ME)
    fails(errno.EINVAL, handle.write, 0, b"p" * (wire.MAX_LINE + 1))
    assert status(handle).state == "failed"

    handle, _ = setup.tree.create(REQUESTS_INO, b"pieces", ME)
    assert handle.write(0, b"put " + b"x" * (wire.MAX_LINE // 2 - 4)) == wire.MAX_LINE // 2
    assert handle.write(0, b"y" * (wire.MAX_LINE // 2)) == wire.MAX_LINE // 2  # exactly MAX_LINE: still a line
    fails(errno.EINVAL, handle.write, 0, b"z")
    assert status(handle).state == "failed"


@pytest.mark.parametrize("line", [b"\xff\xfe garbage\n", "put caf\u00e9\n".encode(), b"put \x80\n"])
def test_non_ascii_line_is_einval(setup: Setup, line: bytes) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"binary", ME)
    error = fails(errno.EINVAL, handle.write, 0, line)
    assert "ASCII" in str(error)
    assert status(handle) == wire.Status("failed", error="the line is not ASCII text")


def test_malformed_ask_is_einval(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"malformed", ME)
    fails(errno.EINVAL, handle.write, 0, f"put {ENV} ../x {setup.digest}\n".encode())
    assert status(handle).state == "failed"


def test_unknown_content_is_enoent(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"unknown", ME)
    fails(errno.ENOENT, handle.write, 0, ask_line("dst", UNKNOWN))
    assert status(handle).state == "failed"


def test_second_ask_is_eexist_and_keeps_the_challenge(setup: Setup) -> None:
    handle, challenge = ask(setup, b"again")
    fails(errno.EEXIST, handle.write, 0, ask_line("other", setup.digest))
    assert status(handle) == challenge
    handle.write(0, answer_line(challenge))
    fails(errno.EEXIST, handle.write, 0, ask_line("other", setup.digest))
    assert status(handle).state == "accepted"
    fails(errno.EEXIST, setup.tree.create, REQUESTS_INO, b"again", ME)  # the name is taken


def test_ask_past_max_open_requests_is_ebusy(setup: Setup) -> None:
    first, challenge = ask(setup, b"first", "d1")
    ask(setup, b"second", "d2")
    third, _ = setup.tree.create(REQUESTS_INO, b"third", ME)
    fails(errno.EBUSY, third.write, 0, ask_line("d3", setup.digest))
    assert status(third).state == "failed"
    first.write(0, answer_line(challenge))  # answered: no longer open
    ask(setup, b"fourth", "d3")


def test_expired_requests_no_longer_count_as_open(setup: Setup) -> None:
    ask(setup, b"first", "d1")
    ask(setup, b"second", "d2")
    setup.clock.advance(60)
    ask(setup, b"third", "d3")


def test_too_many_request_files_is_ebusy(setup: Setup) -> None:
    limit = 4 * MAX_OPEN + 64
    for number in range(limit):
        setup.tree.create(REQUESTS_INO, f"f{number}".encode(), ME)[0].release()
    fails(errno.EBUSY, setup.tree.create, REQUESTS_INO, b"one-more", ME)
    setup.tree.create(REQUESTS_INO, b"one-more", OTHER)  # the bound is per uid
    setup.tree.unlink(REQUESTS_INO, b"f0", ME)
    setup.tree.create(REQUESTS_INO, b"one-more", ME)


# -- names, uids, lifetime -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"", b"a b", b"x" * 65, b"star*", b"tab\tx", "\u00fc".encode(), b".", b"..",
                                  b"a/b"])
def test_bad_names_are_einval(setup: Setup, name: bytes) -> None:
    fails(errno.EINVAL, setup.tree.create, REQUESTS_INO, name, ME)
    fails(errno.EINVAL, setup.tree.lookup, REQUESTS_INO, name, ME)
    assert names(setup) == []


def test_extreme_allowed_names(setup: Setup) -> None:
    for name in (b"x" * 64, b"A.z_0-9", b"...", b"-"):
        setup.tree.create(REQUESTS_INO, name, ME)[0].release()
    assert names(setup) == sorted([b"x" * 64, b"A.z_0-9", b"...", b"-"])


def test_another_uids_request_is_enoent(setup: Setup) -> None:
    handle, challenge = ask(setup, b"mine")
    ino = setup.tree.lookup(REQUESTS_INO, b"mine", ME).ino
    fails(errno.ENOENT, setup.tree.lookup, REQUESTS_INO, b"mine", OTHER)
    fails(errno.ENOENT, setup.tree.open, ino, 0, OTHER)
    fails(errno.ENOENT, setup.tree.unlink, REQUESTS_INO, b"mine", OTHER)
    assert names(setup, OTHER) == []

    theirs, _ = setup.tree.create(REQUESTS_INO, b"mine", OTHER)  # the same name is another request
    assert setup.tree.lookup(REQUESTS_INO, b"mine", OTHER).ino != ino
    assert setup.tree.lookup(REQUESTS_INO, b"mine", OTHER).uid == OTHER.uid
    fails(errno.EINVAL, theirs.write, 0, answer_line(challenge))  # an answer is no ask
    assert status(handle) == challenge
    assert names(setup, OTHER) == [b"mine"] and names(setup, ME) == [b"mine"]


def test_failed_ask_disappears_at_last_close(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"refused", ME)
    ino = setup.tree.lookup(REQUESTS_INO, b"refused", ME).ino
    second = setup.tree.open(ino, 0, ME)
    fails(errno.ENOENT, handle.write, 0, ask_line("dst", UNKNOWN))
    handle.release()
    assert status(second).state == "failed"  # still open elsewhere: it still tells why
    assert names(setup) == [b"refused"]
    second.release()
    fails(errno.ENOENT, setup.tree.lookup, REQUESTS_INO, b"refused", ME)
    fails(errno.ENOENT, setup.tree.getattr, ino, ME)
    assert names(setup) == []


def test_partial_line_is_forgotten_at_last_close(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"partial", ME)
    handle.write(0, b"put ")
    handle.release()
    handle = setup.tree.open(setup.tree.lookup(REQUESTS_INO, b"partial", ME).ino, 0, ME)
    handle.write(0, ask_line("dst", setup.digest))
    assert status(handle).state == "challenged"


def test_never_asked_files_are_purged_a_lifetime_after_creation(setup: Setup) -> None:
    setup.tree.create(REQUESTS_INO, b"touched", ME)[0].release()
    kept_open, _ = setup.tree.create(REQUESTS_INO, b"open", ME)
    setup.clock.advance(59)
    assert names(setup) == [b"open", b"touched"]
    setup.clock.advance(1)
    assert names(setup) == [b"open"]  # an open handle keeps its file
    fails(errno.ENOENT, setup.tree.lookup, REQUESTS_INO, b"touched", ME)
    kept_open.release()
    assert names(setup) == []


def test_finished_requests_are_purged_a_lifetime_after_they_ended(setup: Setup) -> None:
    handle, challenge = ask(setup, b"answered")
    handle.write(0, answer_line(challenge))
    handle.release()
    unanswered, _ = ask(setup, b"unanswered", "other")
    unanswered.release()
    setup.clock.advance(59.9)
    assert names(setup) == [b"answered", b"unanswered"]
    setup.clock.advance(0.1)  # answered a lifetime ago; unanswered expired just now
    assert names(setup) == [b"unanswered"]
    setup.clock.advance(60)
    assert names(setup) == []


def test_unlink_drops_a_request_and_frees_its_name(setup: Setup) -> None:
    handle, challenge = ask(setup, b"dropped")
    handle.release()
    setup.tree.unlink(REQUESTS_INO, b"dropped", ME)
    fails(errno.ENOENT, setup.tree.lookup, REQUESTS_INO, b"dropped", ME)
    fails(errno.ENOENT, setup.tree.unlink, REQUESTS_INO, b"dropped", ME)
    fresh, _ = setup.tree.create(REQUESTS_INO, b"dropped", ME)
    fails(errno.EINVAL, fresh.write, 0, answer_line(challenge))  # a new file: an answer there is a bad ask


# -- the directory as the adapter sees it ------------------------------------------------------------


def test_the_directory_and_what_it_refuses(setup: Setup) -> None:
    tree = setup.tree
    directory = tree.lookup(ROOT, REQUESTS_DIR, ME)
    assert directory == tree.getattr(REQUESTS_INO, OTHER)
    assert (directory.ino, directory.mode, directory.uid, directory.nlink) == (
        REQUESTS_INO, stat.S_IFDIR | 0o1777, 0, 2)
    handle, _ = tree.create(REQUESTS_INO, b"r", ME)
    ino = tree.lookup(REQUESTS_INO, b"r", ME).ino
    assert ino in tree.inodes and ino != REQUESTS_INO

    assert tree.setattr(ino, AttributeChange(size=0), ME) == tree.getattr(ino, ME)  # how shells open it
    assert tree.setattr(ino, AttributeChange(mtime_ns=5), ME).mtime_ns != 5
    for change in (AttributeChange(mode=0o644), AttributeChange(uid=1), AttributeChange(gid=1)):
        fails(errno.EPERM, tree.setattr, ino, change, ME)
    fails(errno.EPERM, tree.setattr, REQUESTS_INO, AttributeChange(mode=0o755), ME)
    fails(errno.EPERM, tree.open, REQUESTS_INO, 0, ME)
    fails(errno.EPERM, tree.unlink, ROOT, REQUESTS_DIR, ME)
    fails(errno.EPERM, tree.create, ROOT, REQUESTS_DIR, ME)
    fails(errno.EPERM, tree.create, ino, b"x", ME)
    fails(errno.ENOTDIR, tree.listing, ino, ME)
    fails(errno.ENOTDIR, tree.lookup, ino, b"x", ME)
    fails(errno.ENOENT, tree.getattr, REQUESTS_INO + 10_000, ME)
    fails(errno.ENOENT, tree.open, REQUESTS_INO + 10_000, 0, ME)
    handle.release()


# -- the router --------------------------------------------------------------------------------------------


class Stats(VirtualTree):
    """A stand-in for ``/.stats``: one read-only file in /, in its own inode range."""

    names = (b".stats",)
    inodes = inode_range(1)

    def __init__(self) -> None:
        self.attributes = Attributes(self.inodes.start, stat.S_IFREG | 0o444, 0, 0, 1, 2, 0, 0, 0)

    def lookup(self, parent: int, name: bytes, caller: Owner) -> Attributes:
        return self.attributes

    def getattr(self, ino: int, caller: Owner) -> Attributes:
        return self.attributes

    def open(self, ino: int, flags: int, caller: Owner) -> VirtualHandle:
        raise VirtualError(errno.EACCES)


def test_router_says_which_subtree_owns_each_inode_and_name(setup: Setup) -> None:
    stats = Stats()
    router = VirtualFiles(setup.tree, stats)
    assert router.by_inode(REQUESTS_INO) is setup.tree
    assert router.by_inode(REQUESTS_INO + 12345) is setup.tree
    assert router.by_inode(stats.inodes.start) is stats and router.by_inode(stats.inodes.stop - 1) is stats
    assert REQUESTS_INO + 12345 not in stats.inodes
    for catalog in (ROOT, 2, 12345, (1 << 62) - 1):
        assert router.by_inode(catalog) is None and not router.is_virtual(catalog)
    assert router.by_inode(inode_range(2).start) is None

    assert router.by_entry(ROOT, b".requests") is setup.tree
    assert router.by_entry(ROOT, b".stats") is stats
    assert router.by_entry(REQUESTS_INO, b"anything") is setup.tree
    for parent, name in ((ROOT, ENV.encode()), (ROOT, b".global"), (ROOT, b".users"), (2, b".requests")):
        assert router.by_entry(parent, name) is None

    assert [name for name, _ in router.root_entries(ME)] == [b".requests", b".stats"]
    assert router.root_entries(ME)[1][1] == stats.attributes


def test_router_refuses_changes_to_virtual_entries(setup: Setup) -> None:
    router = VirtualFiles(setup.tree, Stats())
    fails(errno.EEXIST, router.refuse_new, ROOT, b".requests")
    fails(errno.EEXIST, router.refuse_new, ROOT, b".stats")
    fails(errno.EPERM, router.refuse_new, REQUESTS_INO, b"sub")
    router.refuse_new(ROOT, ENV.encode())
    router.refuse_new(2, b".requests")
    fails(errno.EPERM, router.refuse_entries, (ROOT, b".requests"))
    fails(errno.EPERM, router.refuse_entries, (2, b"a"), (REQUESTS_INO, b"b"))
    router.refuse_entries((2, b"a"), (ROOT, ENV.encode()))
    fails(errno.EPERM, router.refuse, 2, REQUESTS_INO + 1)
    router.refuse(ROOT, 2)


def test_router_rejects_overlapping_ranges_and_names(setup: Setup) -> None:
    class Clash(Stats):
        inodes = range(REQUESTS_INO + 100, REQUESTS_INO + 200)

    class Renamed(Stats):
        names = (REQUESTS_DIR,)

    class Low(Stats):
        inodes = range(1000, 2000)

    for bad in (Clash(), Renamed(), Low()):
        with pytest.raises(ValueError):
            VirtualFiles(setup.tree, bad)


def test_a_reason_quoting_any_bytes_of_a_name_is_one_ascii_line_of_the_status(setup: Setup) -> None:
    handle, _ = setup.tree.create(REQUESTS_INO, b"r1", Owner(3001, 3001))  # may not write there: the reason
    fails(errno.EACCES, handle.write, 0, ask_line("\x80\nx", setup.digest))  # quotes the path
    text = handle.read(0, 1 << 20)
    status = wire.parse_status(text.decode("ascii"))  # never anything but ASCII
    assert status.state == "failed" and "\\x80\\nx" in status.error
    assert text.count(b"\n") == 2  # status and error: the newline in the name did not make a line
