"""Proof of access through the store: challenges, answers, expiry, bounds."""

from __future__ import annotations

import math
import os
import random

import blake3
import pytest

from fusestore import RequestResponse, Store, errors

from .helpers import ENV, ManualClock, put, read

DATA = bytes(random.Random(7).randbytes(100_000))


def answer(data: bytes, response: RequestResponse) -> str:
    hasher = blake3.blake3()
    for offset, size in response.ranges:
        hasher.update(data[offset:offset + size])
    return hasher.hexdigest()


def test_request_gives_ranges_inside_the_content_and_an_expiry(store: Store, clock: ManualClock) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    assert isinstance(response.request_id, str) and response.request_id
    assert len(response.ranges) == 32
    for offset, size in response.ranges:
        assert 512 <= size <= 2048 and 0 <= offset and offset + size <= len(DATA)
    assert clock.now < response.expires <= clock.now + 60


@pytest.mark.parametrize("length", [1, 2, 3, 700, 1023, 1024, 1025, 3000])
def test_range_sizes_follow_the_bounds_for_small_content(store: Store, length: int) -> None:
    data = DATA[:length]
    h = put(store, "src", data)
    response = store.put_for_environment_request(ENV, "dst", h)
    low, high = min(512, math.ceil(length / 2)), min(2048, length)
    for offset, size in response.ranges:
        assert low <= size <= high and offset + size <= length
    store.proof_of_access_response(response.request_id, answer(data, response))
    assert read(store, "dst") == data


def test_correct_answer_links_without_new_blob(store: Store) -> None:
    h = put(store, "src", DATA)
    blobs_before = list(store.blobs.digests())
    response = store.put_for_environment_request(ENV, "dir/dst", h)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "dir/dst") == DATA
    assert store.resource(h).refcount == 2
    assert list(store.blobs.digests()) == blobs_before


def test_link_replaces_existing_content_and_frees_it(store: Store) -> None:
    h = put(store, "src", DATA)
    old = put(store, "dst", b"old content")
    response = store.put_for_environment_request(ENV, "dst", h)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "dst") == DATA
    assert store.resource(old) is None


def test_single_range_challenge(store_path, clock: ManualClock) -> None:
    with Store.open(store_path, clock=clock, challenge_ranges=1) as store:
        h = put(store, "src", DATA)
        response = store.put_for_environment_request(ENV, "dst", h)
        assert len(response.ranges) == 1
        store.proof_of_access_response(response.request_id, answer(DATA, response))
        assert read(store, "dst") == DATA


def test_empty_content_has_no_ranges_and_answer_of_no_bytes(store: Store) -> None:
    h = put(store, "src", b"")
    response = store.put_for_environment_request(ENV, "dst", h)
    assert response.ranges == []
    store.proof_of_access_response(response.request_id, blake3.blake3(b"").hexdigest())
    assert read(store, "dst") == b""


def test_wrong_answer_is_mismatch_and_consumes_the_request(store: Store) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    tampered = bytearray(DATA)
    offset, _ = response.ranges[0]
    tampered[offset] ^= 0xFF
    with pytest.raises(errors.ResponseMismatch):
        store.proof_of_access_response(response.request_id, answer(bytes(tampered), response))
    with pytest.raises(errors.RequestExpired):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "dst")


@pytest.mark.parametrize("garbage", ["", "zz", "00" * 31, "not hex at all"])
def test_malformed_answer_is_mismatch(store: Store, garbage: str) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    with pytest.raises(errors.ResponseMismatch):
        store.proof_of_access_response(response.request_id, garbage)


def test_answer_after_expiry_is_request_expired(store: Store, clock: ManualClock) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    clock.now = response.expires
    with pytest.raises(errors.RequestExpired):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "dst")


def test_answer_just_before_expiry_is_accepted(store: Store, clock: ManualClock) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    clock.now = response.expires - 0.001
    store.proof_of_access_response(response.request_id, answer(DATA, response))


def test_double_answer_is_request_expired(store: Store) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.RequestExpired):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert store.resource(h).refcount == 2


def test_unknown_request_id_is_request_expired(store: Store) -> None:
    with pytest.raises(errors.RequestExpired):
        store.proof_of_access_response("no-such-request", "00" * 32)


def test_content_deleted_between_request_and_answer(store: Store) -> None:
    h = put(store, "src", DATA)
    response = store.put_for_environment_request(ENV, "dst", h)
    store.remove_for_environment(ENV, "src")
    with pytest.raises(errors.ResourceDeleted):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "dst")
    assert store.resources() == []


def test_request_for_unknown_hash_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.put_for_environment_request(ENV, "dst", blake3.blake3(b"never stored").hexdigest())


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "0" * 63, "0" * 65, "A" * 63 + " "])
def test_request_with_malformed_hash_is_invalid_name(store: Store, bad: str) -> None:
    with pytest.raises(errors.InvalidName):
        store.put_for_environment_request(ENV, "dst", bad)


def test_request_with_bad_destination_is_refused(store: Store) -> None:
    h = put(store, "dir/src", DATA)
    with pytest.raises(errors.InvalidName):
        store.put_for_environment_request("nope", "dst", h)
    with pytest.raises(errors.InvalidName):
        store.put_for_environment_request(ENV, "../dst", h)
    with pytest.raises(errors.IsADirectory):
        store.put_for_environment_request(ENV, "dir", h)
    with pytest.raises(errors.NotADirectory):
        store.put_for_environment_request(ENV, "dir/src/below", h)


def test_many_requests_answered_in_random_order(store: Store) -> None:
    contents = [DATA[i * 1000:(i + 1) * 1000 + 5000] for i in range(20)]
    hashes = [put(store, f"src/{i}", c) for i, c in enumerate(contents)]
    pending = [(i, store.put_for_environment_request(ENV, f"dst/{i}", h)) for i, h in enumerate(hashes)]
    random.Random(3).shuffle(pending)
    for i, response in pending:
        store.proof_of_access_response(response.request_id, answer(contents[i], response))
    for i, content in enumerate(contents):
        assert read(store, f"dst/{i}") == content
    assert all(res.refcount == 2 for res in store.resources())


def test_open_requests_are_bounded_and_expired_ones_purged(store_path, clock: ManualClock) -> None:
    with Store.open(store_path, clock=clock, max_open_requests=3, request_ttl=10) as store:
        h = put(store, "src", DATA)
        for i in range(3):
            store.put_for_environment_request(ENV, f"d{i}", h)
        with pytest.raises(errors.TooManyRequests):
            store.put_for_environment_request(ENV, "d3", h)
        clock.advance(10)
        response = store.put_for_environment_request(ENV, "d3", h)
        assert response.expires == clock.now + 10
        assert len(store.requests) == 1


def test_requests_use_the_injected_randomness(store_path, clock: ManualClock) -> None:
    with Store.open(store_path, clock=clock, randbelow=lambda n: 0) as store:
        h = put(store, "src", DATA)
        response = store.put_for_environment_request(ENV, "dst", h)
        assert set(response.ranges) == {(0, 512)}


def test_request_on_behalf_of_a_user_checks_permission_and_gives_ownership(store: Store) -> None:
    from fusestore.store.owners import Owner

    h = put(store, "src", DATA)  # the environment directory belongs to this process, mode 0755
    stranger = Owner(4321, 4321)
    if stranger.uid == os.getuid():
        stranger = Owner(4322, 4322)
    with pytest.raises(errors.AccessDenied):
        store.put_for_environment_request(ENV, "theirs/dst", h, owner=stranger)
    me = Owner(os.getuid(), os.getgid())
    response = store.put_for_environment_request(ENV, "mine/dst", h, owner=me)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    with store.catalog.read() as tx:
        node, _ = store.namespace.walk(tx, [ENV.encode(), b"mine", b"dst"])
        assert (node.uid, node.gid) == (me.uid, me.gid)


def test_permission_is_checked_again_when_answered(store: Store) -> None:
    from fusestore.store.owners import Owner

    h = put(store, "src", DATA)
    owner = Owner(4321, 4321)
    with store.catalog.write() as tx:  # give the environment to that user, then take it back
        env_dir, _ = store.namespace.walk(tx, [ENV.encode()])
        env_dir.uid = owner.uid
        tx.save_inode(env_dir)
    response = store.put_for_environment_request(ENV, "dst", h, owner=owner)
    with store.catalog.write() as tx:
        env_dir, _ = store.namespace.walk(tx, [ENV.encode()])
        env_dir.uid = 0
        tx.save_inode(env_dir)
    with pytest.raises(errors.AccessDenied):
        store.proof_of_access_response(response.request_id, answer(DATA, response))
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "dst")


def test_a_link_for_a_caller_counts_its_supplementary_groups_as_the_kernel_does(store: Store) -> None:
    from fusestore.store.owners import Owner

    h = put(store, "src", DATA)
    shared = store.namespace.mkdir(store.namespace.lookup(1, ENV.encode()).ino, b"team", 0o770, Owner(0, 4000))
    assert (shared.uid, shared.gid) == (0, 4000)
    with pytest.raises(errors.AccessDenied):  # neither owner nor in the group
        store.put_for_environment_request(ENV, "team/f", h, owner=Owner(3001, 3001))
    member = Owner(3001, 3001, groups=frozenset({4000}))
    response = store.put_for_environment_request(ENV, "team/f", h, owner=member)
    store.proof_of_access_response(response.request_id, answer(DATA, response))
    assert read(store, "team/f") == DATA
