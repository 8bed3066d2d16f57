"""The rules between tenants, through the store library with a clock moved by hand (``store.tenancy``).

Caps on asks per uid, what a restricted mount reveals through asks and
``/.stats``, and how a request's destination is resolved. The same rules
on a real mount, with other uids, are in ``test_fs_tenants.py``.
"""

from __future__ import annotations

import errno
import io
import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import pyfuse3
import pytest

from fusestore import RequestResponse, Store, errors
from fusestore.catalog import ROOT_INO, unknown_resource
from fusestore.cli import mount_cmd, parser
from fusestore.cli.stats_cmd import table
from fusestore.client import wire
from fusestore.fs.operations import Operations
from fusestore.fs.requests_dir import REQUESTS_INO, Requests, RequestsDir
from fusestore.fs.virtual import VirtualError, VirtualHandle
from fusestore.store import stats
from fusestore.store.owners import Owner
from fusestore.store.stats import TOTALS, Stats
from fusestore.store.tenancy import RATE_WINDOW, Tenancy

from .helpers import ENV, ENV2, ManualClock, put, read
from .mount_helpers import FUSESTORE

ALICE = Owner(3001, 3001)
BOB = Owner(3002, 3002)
ROOT = Owner(0, 0)
DATA = random.Random(5).randbytes(20_000)
UNKNOWN = blake3.blake3(b"nobody stored this").hexdigest()


def answer(data: bytes, response: RequestResponse) -> str:
    hasher = blake3.blake3()
    for offset, size in response.ranges:
        hasher.update(data[offset:offset + size])
    return hasher.hexdigest()


def opened(store_path: Path, clock: ManualClock, **rules: object) -> Store:
    return Store.open(store_path, clock=clock, tenancy=Tenancy(**rules))  # type: ignore[arg-type]


def environment(store: Store, env: str, owner: Owner, mode: int = 0o755) -> None:
    store.namespace.mkdir(ROOT_INO, env.encode(), mode, owner)


@pytest.fixture
def shared(store_path: Path, clock: ManualClock) -> Iterator[tuple[Store, str]]:
    """Alice's environment ENV holding DATA, Bob's ENV2 empty; at most 3 open requests and 10 asks a minute per uid."""
    with opened(store_path, clock, max_requests_per_uid=3, request_rate=10) as store:
        environment(store, ENV, ALICE)
        environment(store, ENV2, BOB)
        yield store, put(store, "src", DATA)


def busy(call: object, *args: object, **kwargs: object) -> errors.TooManyRequests:
    with pytest.raises(errors.TooManyRequests) as raised:
        call(*args, **kwargs)  # type: ignore[operator]
    assert raised.value.errno == errno.EBUSY
    return raised.value


# -- caps ----------------------------------------------------------------------------------------------


def test_a_uid_has_at_most_max_requests_per_uid_open_and_the_others_are_not_affected(shared: tuple[Store, str]
                                                                                     ) -> None:
    store, digest = shared
    asks = [store.put_for_environment_request(ENV, f"d{i}", digest, owner=ALICE) for i in range(3)]
    busy(store.put_for_environment_request, ENV, "d3", digest, owner=ALICE)
    assert store.requests.open_for(ALICE.uid) == 3
    response = store.put_for_environment_request(ENV2, "copy", digest, owner=BOB)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "copy", env=ENV2) == DATA
    store.proof_of_access_response(asks[0].request_id, answer(DATA, asks[0]))  # answered: no longer open
    store.put_for_environment_request(ENV, "d3", digest, owner=ALICE)
    busy(store.put_for_environment_request, ENV, "d4", digest, owner=ALICE)


def test_root_is_capped_too(store_path: Path, clock: ManualClock) -> None:
    with opened(store_path, clock, max_requests_per_uid=2) as store:
        digest = put(store, "src", DATA)
        store.put_for_environment_request(ENV, "a", digest)  # no owner: this process, root in the test suite
        store.put_for_environment_request(ENV, "b", digest, owner=ROOT)
        busy(store.put_for_environment_request, ENV, "c", digest)


def test_a_wrong_answer_ends_its_request_and_frees_its_place(shared: tuple[Store, str]) -> None:
    store, digest = shared
    response = store.put_for_environment_request(ENV, "dst", digest, owner=ALICE)
    with pytest.raises(errors.ResponseMismatch):
        store.proof_of_access_response(response.request_id, "00" * 32)
    assert store.requests.open_for(ALICE.uid) == 0
    with pytest.raises(errors.RequestExpired):  # the right answer now comes too late: guessing needs a new ask
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "dst")


def test_expired_and_dropped_requests_are_no_longer_open(shared: tuple[Store, str], clock: ManualClock) -> None:
    store, digest = shared
    first = store.put_for_environment_request(ENV, "a", digest, owner=ALICE)
    clock.advance(30)
    store.put_for_environment_request(ENV, "b", digest, owner=ALICE)
    store.put_for_environment_request(ENV, "c", digest, owner=ALICE)
    store.requests.drop(first.request_id)
    store.requests.drop("no-such-request")  # ignored
    assert store.requests.open_for(ALICE.uid) == 2
    clock.advance(59.9)
    assert store.requests.open_for(ALICE.uid) == 2
    clock.advance(0.1)  # b and c were asked a lifetime (60 s) ago
    assert store.requests.open_for(ALICE.uid) == 0


def test_every_ask_counts_against_the_rate_whatever_its_outcome(shared: tuple[Store, str], clock: ManualClock
                                                                ) -> None:
    store, digest = shared
    failing = [("not-a-uuid", "x", digest, errors.InvalidName), (ENV, "../x", digest, errors.InvalidName),
               (ENV, "x", "zz", errors.InvalidName), (ENV, "x", UNKNOWN, errors.NotFound),
               (ENV2, "x", digest, errors.AccessDenied), (ENV, "src/below", digest, errors.NotADirectory)]
    for env, path, hash_hex, error in failing:
        with pytest.raises(error):
            store.put_for_environment_request(env, path, hash_hex, owner=ALICE)
        clock.advance(1)
    for number in range(3):
        response = store.put_for_environment_request(ENV, f"ok{number}", digest, owner=ALICE)
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    store.requests.count_ask(ALICE.uid)  # a malformed control line counts too: 10 asks so far
    busy(store.put_for_environment_request, ENV, "more", digest, owner=ALICE)
    busy(store.requests.count_ask, ALICE.uid)
    store.put_for_environment_request(ENV2, "bob", digest, owner=BOB)  # Bob has his own budget
    clock.advance(RATE_WINDOW - 6)  # the first ask was RATE_WINDOW ago: one more may come
    store.put_for_environment_request(ENV, "again", digest, owner=ALICE)
    busy(store.put_for_environment_request, ENV, "more", digest, owner=ALICE)


def test_asks_refused_as_busy_do_not_count(shared: tuple[Store, str], clock: ManualClock) -> None:
    store, digest = shared
    for _ in range(10):
        store.requests.count_ask(ALICE.uid)
    for _ in range(50):
        busy(store.requests.count_ask, ALICE.uid)
    clock.advance(RATE_WINDOW)
    for _ in range(10):  # a whole window's worth again: the refused ones were not counted
        store.requests.count_ask(ALICE.uid)
    busy(store.requests.count_ask, ALICE.uid)


def test_caps_are_checked_before_anything_is_looked_up(shared: tuple[Store, str]) -> None:
    store, digest = shared
    for i in range(3):
        store.put_for_environment_request(ENV, f"d{i}", digest, owner=ALICE)
    for env, path, hash_hex in ((ENV, "x", UNKNOWN), (ENV, "x", "zz"), ("bad", "x", digest), (ENV2, "x", digest)):
        error = busy(store.put_for_environment_request, env, path, hash_hex, owner=ALICE)
        assert UNKNOWN not in str(error) and digest not in str(error)


def test_the_store_wide_bound_still_applies(store_path: Path, clock: ManualClock) -> None:
    with Store.open(store_path, clock=clock, max_open_requests=2) as store:
        environment(store, ENV, ALICE, 0o777)
        digest = put(store, "src", DATA)
        store.put_for_environment_request(ENV, "a", digest, owner=ALICE)
        store.put_for_environment_request(ENV, "b", digest, owner=BOB)
        busy(store.put_for_environment_request, ENV, "c", digest, owner=ROOT)
        busy(store.put_for_environment_request, ENV, "c", UNKNOWN, owner=ROOT)  # full: unknown content is EBUSY too


def test_challenges_come_from_secrets_and_each_request_takes_one_answer(shared: tuple[Store, str]) -> None:
    store, digest = shared
    assert store.randbelow is secrets.randbelow
    response = store.put_for_environment_request(ENV, "dst", digest, owner=ALICE)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.RequestExpired):
        store.proof_of_access_response(response.request_id, answer(DATA, response))


def test_caps_must_be_positive() -> None:
    for rules in ({"max_requests_per_uid": 0}, {"request_rate": 0}, {"requests": "sometimes"}):
        with pytest.raises(ValueError):
            Tenancy(**rules)  # type: ignore[arg-type]


# -- the destination of a request -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/abs", "a//b", "a/", "./a", "a/./b", "a/../b", "..", "a\0b", "x" * 256 + "/f",
                                  "d/" + "y" * 256])
def test_bad_paths_are_invalid(shared: tuple[Store, str], path: str) -> None:
    store, digest = shared
    with pytest.raises(errors.InvalidName):
        store.put_for_environment_request(ENV, path, digest, owner=ALICE)


def test_a_name_of_255_bytes_is_fine(shared: tuple[Store, str]) -> None:
    store, digest = shared
    response = store.put_for_environment_request(ENV, "\u00e9" * 127 + "x", digest, owner=ALICE)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "\u00e9" * 127 + "x") == DATA


def symlink(store: Store, env: str, path: str, target: bytes) -> None:
    *parents, name = path.encode().split(b"/")
    with store.catalog.read() as tx:
        directory, _ = store.namespace.walk(tx, [env.encode(), *parents])
    store.namespace.symlink(directory.ino, name, target, ROOT)


def test_a_file_or_symlink_above_the_last_component_is_not_a_directory(shared: tuple[Store, str]) -> None:
    store, digest = shared
    put(store, "dir/file", b"x")
    symlink(store, ENV, "link", b"dir")
    for path in ("src/x", "dir/file/x", "link/x", "link/deeper/x"):
        with pytest.raises(errors.NotADirectory):
            store.put_for_environment_request(ENV, path, digest, owner=ALICE)
    assert read(store, "dir/file") == b"x"


def test_a_directory_that_became_a_symlink_fails_the_answer_and_links_nothing(shared: tuple[Store, str]) -> None:
    store, digest = shared
    put(store, "dir/keep", b"kept")
    response = store.put_for_environment_request(ENV, "dir/sub/dst", digest, owner=ROOT)
    parent, name, _ = store.locate_for_environment(ENV, "dir")
    store.namespace.rename(parent, name, parent, b"moved", 0)
    symlink(store, ENV, "dir", b"moved")
    with pytest.raises(errors.NotADirectory):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "moved/keep") == b"kept"
    with pytest.raises(errors.NotFound):
        read(store, "moved/sub/dst")


def test_a_symlink_at_the_end_is_replaced_and_its_target_untouched(shared: tuple[Store, str]) -> None:
    store, digest = shared
    put(store, "target", b"the target")
    symlink(store, ENV, "dst", b"target")
    symlink(store, ENV, "dangling", b"nowhere/at/all")
    for path in ("dst", "dangling"):
        response = store.put_for_environment_request(ENV, path, digest, owner=ALICE)
        store.proof_of_access_response(response.request_id, answer(DATA, response))
        assert read(store, path) == DATA
    assert read(store, "target") == b"the target"
    with pytest.raises(errors.NotFound):
        read(store, "nowhere/at/all")
    _, _, ino = store.locate_for_environment(ENV, "dst")
    attributes = store.namespace.getattr(ino)
    assert (attributes.uid, attributes.nlink) == (ALICE.uid, 1)


def test_a_symlink_in_a_sticky_directory_is_replaced_only_by_its_owner_or_the_directorys(
        shared: tuple[Store, str]) -> None:
    store, digest = shared
    with store.catalog.read() as tx:
        env_dir, _ = store.namespace.walk(tx, [ENV2.encode()])
    store.namespace.setattr(env_dir.ino, mode=0o1777)
    symlink(store, ENV2, "roots", b"x")
    with pytest.raises(errors.AccessDenied):
        store.put_for_environment_request(ENV2, "roots", digest, owner=ALICE)
    store.put_for_environment_request(ENV2, "roots", digest, owner=BOB)  # the directory is Bob's


def test_no_search_permission_is_eacces_before_anything_below_shows(shared: tuple[Store, str]) -> None:
    store, digest = shared
    with store.catalog.read() as tx:
        env_dir, _ = store.namespace.walk(tx, [ENV2.encode()])
    put(store, "file", b"bob's", env=ENV2)
    store.namespace.setattr(env_dir.ino, mode=0o700)
    for path in ("file/x", "file", "missing/x", "x"):
        with pytest.raises(errors.AccessDenied):
            store.put_for_environment_request(ENV2, path, digest, owner=ALICE)


# -- what a restricted mount reveals ------------------------------------------------------------------


@pytest.fixture
def same_owner(store_path: Path, clock: ManualClock) -> Iterator[tuple[Store, str, str]]:
    """--requests-same-owner: Alice's ENV holds DATA, Bob's ENV2 holds his own content."""
    with opened(store_path, clock, requests="same-owner") as store:
        environment(store, ENV, ALICE)
        environment(store, ENV2, BOB)
        yield store, put(store, "src", DATA), put(store, "bobs", b"bob's own bytes", env=ENV2)


def test_same_owner_finds_only_content_of_the_callers_environments(same_owner: tuple[Store, str, str]) -> None:
    store, alices, bobs = same_owner
    with pytest.raises(errors.NotFound) as refused:
        store.put_for_environment_request(ENV2, "copy", alices, owner=BOB)
    with pytest.raises(errors.NotFound) as unknown:
        store.put_for_environment_request(ENV2, "copy", UNKNOWN, owner=BOB)
    assert str(refused.value) == str(unknown_resource(bytes.fromhex(alices)))  # as unknown content says it
    assert str(unknown.value) == str(unknown_resource(bytes.fromhex(UNKNOWN)))
    response = store.put_for_environment_request(ENV2, "again", bobs, owner=BOB)
    store.proof_of_access_response(response.request_id, answer(b"bob's own bytes", response))
    response = store.put_for_environment_request(ENV, "copy", alices, owner=ALICE)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "copy") == DATA


def test_same_owner_applies_to_root(same_owner: tuple[Store, str, str]) -> None:
    store, alices, _ = same_owner
    with pytest.raises(errors.NotFound):
        store.put_for_environment_request(ENV, "by-root", alices, owner=ROOT)
    store.namespace.mkdir(ROOT_INO, b"11111111-2222-4333-8444-555555555555", 0o755, ROOT)
    store.put_for_environment("11111111-2222-4333-8444-555555555555", "mine", io.BytesIO(DATA), len(DATA))
    store.put_for_environment_request(ENV, "by-root", alices, owner=ROOT)


def test_same_owner_ignores_global_user_and_unlinked_files(same_owner: tuple[Store, str, str]) -> None:
    store, _, _ = same_owner
    shared = b"elsewhere only"
    digest = store.put_global("g", io.BytesIO(shared), len(shared))
    store.put_for_user("bob", "u", io.BytesIO(shared), len(shared))
    with pytest.raises(errors.NotFound):
        store.put_for_environment_request(ENV2, "copy", digest, owner=BOB)
    put(store, "gone", shared, env=ENV2)
    store.remove_for_environment(ENV2, "gone")
    with pytest.raises(errors.NotFound):
        store.put_for_environment_request(ENV2, "copy", digest, owner=BOB)


def test_requests_off_refuses_every_ask(store_path: Path, clock: ManualClock) -> None:
    with opened(store_path, clock, requests="off") as store:
        digest = put(store, "src", DATA)
        with pytest.raises(errors.NotPermitted):
            store.put_for_environment_request(ENV, "dst", digest)
        operations = Operations(store)  # and the mount has no /.requests
        assert operations.virtual.by_entry(pyfuse3.ROOT_INODE, b".requests") is None
        assert [name for name, _ in operations.virtual.root_entries(ROOT)] == [b".stats"]


# -- /.stats --------------------------------------------------------------------------------------------


def populate(store: Store) -> None:
    environment(store, ENV, ALICE)
    environment(store, ENV2, BOB)
    put(store, "a", b"alice's")
    put(store, "b", b"bob's!", env=ENV2)


def test_stats_list_only_the_readers_environments_and_totals_to_everyone(store: Store) -> None:
    populate(store)
    everything = stats.of_store(store, reader_uid=0)
    assert everything.per_environment == {ENV: 7, ENV2: 6}
    alice = stats.of_store(store, reader_uid=ALICE.uid)
    assert alice.per_environment == {ENV: 7}
    assert (alice.files, alice.environments, alice.logical_bytes) == (2, 2, 13)
    assert stats.of_store(store, reader_uid=4444).per_environment == {}
    assert list(alice.as_dict()) == [*TOTALS, "per_environment"]


@pytest.mark.parametrize("mode", ["same-owner", "off"])
def test_restricted_requests_withhold_the_totals_from_everyone_but_root(store_path: Path, clock: ManualClock,
                                                                        mode: str) -> None:
    with opened(store_path, clock, requests=mode) as store:
        populate(store)
        alice = stats.of_store(store, reader_uid=ALICE.uid)
        assert alice.as_dict() == {"per_environment": {ENV: 7}}
        assert Stats.from_json(alice.to_json()) == alice
        assert table(alice).splitlines() == ["store-wide totals: shown to root only on this mount",
                                             "logical bytes per environment:", f"  {ENV}  7  (7 B)"]
        root = stats.of_store(store, reader_uid=0)
        assert root.totals_shown and (root.files, root.logical_bytes) == (2, 13)


# -- the control files under the caps --------------------------------------------------------------------


@pytest.fixture
def tree(shared: tuple[Store, str]) -> RequestsDir:
    return RequestsDir(Requests(shared[0], on_linked=lambda env, path: None))


def write_line(tree: RequestsDir, name: bytes, line: bytes, caller: Owner = ALICE) -> tuple[VirtualHandle, int]:
    """Create ``name`` and write ``line``: the handle and the errno (0 when it succeeded)."""
    handle, _ = tree.create(REQUESTS_INO, name, caller)
    try:
        handle.write(0, line)
    except VirtualError as exc:
        return handle, exc.errno
    return handle, 0


def test_malformed_lines_are_asks_and_count(tree: RequestsDir, shared: tuple[Store, str]) -> None:
    _, digest = shared
    lines = [b"garbage\n", b"\xff\xfe\n", b"put x\n", b"p" * (wire.MAX_LINE + 1), b"00" * 32 + b"\n",
             f"put {ENV} %2Fabs {digest}\n".encode(), f"put {ENV} a/%2E%2E/b {digest}\n".encode(),
             f"put {ENV} a%00b {digest}\n".encode(), f"put {ENV} {'x' * 256} {digest}\n".encode(),
             f"put {ENV} a//b {digest}\n".encode()]
    for number, line in enumerate(lines):
        assert write_line(tree, f"bad{number}".encode(), line)[1] == errno.EINVAL, line[:40]
    handle, code = write_line(tree, b"eleventh", (wire.ask_line(ENV, "dst", digest) + "\n").encode())
    assert code == errno.EBUSY
    assert wire.parse_status(handle.read(0, 4096).decode()).state == "failed"
    assert write_line(tree, b"bob", (wire.ask_line(ENV2, "dst", digest) + "\n").encode(), BOB)[1] == 0


def test_percent_2f_is_a_separator_and_a_file_above_is_enotdir(tree: RequestsDir, shared: tuple[Store, str]) -> None:
    store, digest = shared
    handle, code = write_line(tree, b"sep", f"put {ENV} a%2Fb%2Fc {digest}\n".encode())
    assert code == 0
    challenge = wire.parse_status(handle.read(0, 4096).decode())
    hasher = blake3.blake3()
    for offset, size in challenge.ranges:
        hasher.update(DATA[offset:offset + size])
    handle.write(0, (hasher.hexdigest() + "\n").encode())
    assert read(store, "a/b/c") == DATA
    assert write_line(tree, b"notdir", f"put {ENV} a/b/c/d {digest}\n".encode())[1] == errno.ENOTDIR


def test_removing_a_challenged_request_frees_its_place(tree: RequestsDir, shared: tuple[Store, str]) -> None:
    store, digest = shared
    for number in range(3):
        assert write_line(tree, f"r{number}".encode(), (wire.ask_line(ENV, f"d{number}", digest) + "\n").encode()
                          )[1] == 0
    assert write_line(tree, b"r3", (wire.ask_line(ENV, "d3", digest) + "\n").encode())[1] == errno.EBUSY
    tree.unlink(REQUESTS_INO, b"r0", ALICE)
    assert store.requests.open_for(ALICE.uid) == 2
    assert write_line(tree, b"r4", (wire.ask_line(ENV, "d4", digest) + "\n").encode())[1] == 0


# -- the mount's flags ----------------------------------------------------------------------------------


def test_the_mount_flags_make_the_tenancy() -> None:
    def rules(*flags: str) -> Tenancy:
        return mount_cmd.tenancy(parser().parse_args(["mount", "STORE", "MOUNTPOINT", *flags]))

    assert rules() == Tenancy() == Tenancy(max_requests_per_uid=64, request_rate=600, requests="on")
    assert rules("--max-requests-per-uid", "5", "--request-rate", "7") == Tenancy(5, 7)
    assert rules("--requests-same-owner").requests == "same-owner"
    assert rules("--requests-off").requests == "off"


@pytest.mark.parametrize("flags", [["--max-requests-per-uid", "0"], ["--request-rate", "-1"],
                                   ["--request-rate", "lots"], ["--requests-off", "--requests-same-owner"]])
def test_bad_mount_flags_are_usage_errors(tmp_path: Path, flags: list[str]) -> None:
    result = subprocess.run([*FUSESTORE, "mount", str(tmp_path / "store"), str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and flags[0] in result.stderr.splitlines()[-1], result.stderr
    assert not (tmp_path / "store").exists()


def test_a_put_line_into_a_file_that_asked_already_counts_too(tree: RequestsDir, shared: tuple[Store, str]) -> None:
    store, digest = shared
    handle, code = write_line(tree, b"once", (wire.ask_line(ENV, "dst", digest) + "\n").encode())
    assert code == 0
    for _ in range(9):  # ten asks in all: the caps' rate
        with pytest.raises(VirtualError) as again:
            handle.write(0, (wire.ask_line(ENV, "other", digest) + "\n").encode())
        assert again.value.errno == errno.EEXIST
    with pytest.raises(VirtualError) as capped:
        handle.write(0, (wire.ask_line(ENV, "other", digest) + "\n").encode())
    assert capped.value.errno == errno.EBUSY
    assert wire.parse_status(handle.read(0, 4096).decode()).state == "challenged"  # still answerable


def test_a_callers_supplementary_groups_come_from_its_status() -> None:
    from fusestore.fs.callers import supplementary_groups

    assert supplementary_groups(os.getpid()) == frozenset(os.getgroups())
    assert supplementary_groups(2**22 + 12345) == frozenset()  # no such process: none known, so refused more
