"""The set-ID rule where it lives, in the store: which bits a write clears, and the changes that clear them.

In-process on a real store, without a mount; what the kernel and the
filesystem layer make of it for real writers is ``test_tenants``.
"""

from __future__ import annotations

import stat

import blake3
import pytest

from fusestore import Store
from fusestore.catalog import ROOT_INO
from fusestore.store.owners import Owner
from fusestore.store.setid import cleared_by_write

from .helpers import ENV, put

TENANT = Owner(2001, 2001)
ROOT = Owner(0, 0)
DATA = b"the bytes a tenant links over a set-ID program" * 50


@pytest.mark.parametrize(("mode", "cleared"), [
    (0o4755, 0o4000), (0o2775, 0o2000), (0o6777, 0o6000), (0o2765, 0), (0o6767, 0o4000), (0o1777, 0), (0o755, 0),
], ids=lambda value: f"{value:o}")
def test_a_write_without_cap_fsetid_clears_set_user_id_and_set_group_id_with_group_execute(
    mode: int, cleared: int,
) -> None:
    assert cleared_by_write(stat.S_IFREG | mode) == cleared


def test_clear_setid_is_one_change_of_the_mode_and_ctime_or_none(store: Store) -> None:
    ns = store.namespace
    env = ns.mkdir(ROOT_INO, ENV.encode(), 0o755, TENANT).ino
    f = ns.mknod(env, b"prog", stat.S_IFREG | 0o6775, 0, TENANT)
    cleared = ns.clear_setid(f.ino)
    assert cleared is not None and cleared.mode == stat.S_IFREG | 0o775
    assert cleared.ctime_ns > f.ctime_ns and (cleared.mtime_ns, cleared.size) == (f.mtime_ns, f.size)
    assert ns.getattr(f.ino) == cleared
    assert ns.clear_setid(f.ino) is None and ns.getattr(f.ino) == cleared
    locking = ns.mknod(env, b"locking", stat.S_IFREG | 0o2664, 0, TENANT)  # set-group-ID without group-execute
    assert ns.clear_setid(locking.ino) is None and ns.getattr(locking.ino) == locking


def _link_over(store: Store, owner: Owner) -> int:
    """Root's set-ID program anyone may write, replaced by a proof-of-access link made for ``owner``."""
    digest = put(store, "src", DATA)
    ns = store.namespace
    env = ns.lookup(ROOT_INO, ENV.encode()).ino
    prog = ns.mknod(env, b"prog", stat.S_IFREG | 0o6777, 0, ROOT)
    response = store.put_for_environment_request(ENV, "prog", digest, owner=owner)
    hasher = blake3.blake3()
    for offset, size in response.ranges:
        hasher.update(DATA[offset:offset + size])
    store.proof_of_access_response(response.request_id, hasher.hexdigest())
    linked = ns.getattr(prog.ino)
    assert linked.size == len(DATA)
    return stat.S_IMODE(linked.mode)


def test_a_link_over_a_set_id_program_clears_its_bits_as_a_write_would(store: Store) -> None:
    assert _link_over(store, TENANT) == 0o777


def test_roots_link_keeps_them(store: Store) -> None:
    assert _link_over(store, ROOT) == 0o6777
