"""The inode operations of ``store.namespace`` and ``store.xattrs``, driven in-process on a real store (no mount)."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors
from fusestore.catalog import ROOT_INO
from fusestore.store.attributes import Attributes
from fusestore.store.fsck import find_problems
from fusestore.store.namespace import GLOBAL_DIR, RENAME_EXCHANGE, RENAME_NOREPLACE, USERS_DIR, Namespace
from fusestore.store.owners import Owner

from .helpers import ENV, ENV2, leftover_staging, put, read

OWNER = Owner(1000, 1000)
DATA = b"namespace test content" * 100
REG = stat.S_IFREG | 0o644


@pytest.fixture
def ns(store: Store) -> Namespace:
    return store.namespace


@pytest.fixture
def env(ns: Namespace) -> int:
    """The inode of the environment directory ENV."""
    return ns.mkdir(ROOT_INO, ENV.encode(), 0o755, OWNER).ino


def mkfile(ns: Namespace, parent: int, name: bytes) -> Attributes:
    return ns.mknod(parent, name, REG, 0, OWNER)


def names_in(ns: Namespace, ino: int) -> list[bytes]:
    return [name for name, _ in ns.readdir(ino, b"", 10_000)]


def orphans(store: Store) -> list[int]:
    with store.catalog.read() as tx:
        return tx.orphans()


# -- the rules of / and /.users ---------------------------------------------------------


def test_root_holds_global_and_users_at_first(ns: Namespace) -> None:
    assert names_in(ns, ROOT_INO) == [GLOBAL_DIR, USERS_DIR]
    assert ns.getattr(ROOT_INO).mode == stat.S_IFDIR | 0o1777


def test_environment_directory_in_root_takes_its_creator_as_owner(ns: Namespace) -> None:
    attrs = ns.mkdir(ROOT_INO, ENV.encode(), 0o750, OWNER)
    assert (attrs.mode, attrs.uid, attrs.gid, attrs.nlink) == (stat.S_IFDIR | 0o750, 1000, 1000, 2)
    assert ns.lookup(ROOT_INO, ENV.encode()) == attrs


@pytest.mark.parametrize("name", [b"not-a-uuid", ENV.upper().encode(), ENV.replace("-", "").encode(),
                                  b"{" + ENV.encode() + b"}"])
def test_directory_in_root_that_is_not_a_canonical_uuid_is_einval(ns: Namespace, name: bytes) -> None:
    with pytest.raises(errors.InvalidName) as caught:
        ns.mkdir(ROOT_INO, name, 0o755, OWNER)
    assert caught.value.errno == errno.EINVAL
    assert names_in(ns, ROOT_INO) == [GLOBAL_DIR, USERS_DIR]


def test_files_symlinks_and_nodes_in_root_are_eperm(ns: Namespace) -> None:
    attempts = [
        lambda: ns.mknod(ROOT_INO, ENV.encode(), REG, 0, OWNER),
        lambda: ns.mknod(ROOT_INO, ENV.encode(), stat.S_IFIFO | 0o644, 0, OWNER),
        lambda: ns.symlink(ROOT_INO, ENV.encode(), b"target", OWNER),
        lambda: ns.create(ROOT_INO, ENV.encode(), 0o644, OWNER),
    ]
    for attempt in attempts:
        with pytest.raises(errors.NotPermitted) as caught:
            attempt()
        assert caught.value.errno == errno.EPERM
    assert names_in(ns, ROOT_INO) == [GLOBAL_DIR, USERS_DIR]


def test_a_refused_create_in_root_leaves_no_staging_file(store: Store) -> None:
    with pytest.raises(errors.NotPermitted):
        store.namespace.create(ROOT_INO, b"f", 0o644, OWNER)
    assert leftover_staging(store) == []


def test_users_directory_holds_one_directory_per_user(ns: Namespace) -> None:
    users = ns.lookup(ROOT_INO, USERS_DIR).ino
    alice = ns.mkdir(users, b"alice", 0o700, OWNER)
    assert (alice.uid, alice.gid) == (1000, 1000)
    assert mkfile(ns, alice.ino, b"notes").size == 0
    with pytest.raises(errors.NotPermitted):
        mkfile(ns, users, b"file")


def test_global_and_users_cannot_be_removed(ns: Namespace) -> None:
    for name in (GLOBAL_DIR, USERS_DIR):
        with pytest.raises(errors.NotPermitted) as caught:
            ns.rmdir(ROOT_INO, name)
        assert caught.value.errno == errno.EPERM
    assert names_in(ns, ROOT_INO) == [GLOBAL_DIR, USERS_DIR]


def test_an_empty_environment_can_be_removed_a_full_one_not(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"f")
    with pytest.raises(errors.NotEmpty) as caught:
        ns.rmdir(ROOT_INO, ENV.encode())
    assert caught.value.errno == errno.ENOTEMPTY
    ns.unlink(env, b"f")
    ns.rmdir(ROOT_INO, ENV.encode())
    assert names_in(ns, ROOT_INO) == [GLOBAL_DIR, USERS_DIR]


def test_environments_cannot_be_renamed(ns: Namespace, env: int) -> None:
    with pytest.raises(errors.NotPermitted):
        ns.rename(ROOT_INO, ENV.encode(), ROOT_INO, ENV2.encode(), 0)


# -- creation ------------------------------------------------------------------------------


def test_mkdir_counts_links_of_the_new_directory_and_its_parent(ns: Namespace, env: int) -> None:
    sub = ns.mkdir(env, b"sub", 0o755, OWNER)
    assert sub.nlink == 2
    assert ns.getattr(env).nlink == 3
    ns.mkdir(sub.ino, b"deeper", 0o755, OWNER)
    assert ns.getattr(sub.ino).nlink == 3
    ns.rmdir(sub.ino, b"deeper")
    assert ns.getattr(sub.ino).nlink == 2


def test_mknod_makes_an_empty_regular_file_with_the_empty_content(store: Store, ns: Namespace, env: int) -> None:
    attrs = mkfile(ns, env, b"f")
    assert (attrs.mode, attrs.size, attrs.nlink) == (REG, 0, 1)
    assert store.xattrs.get(attrs.ino, b"user.fusestore.blake3") == blake3.blake3(b"").hexdigest().encode()
    assert read(store, "f") == b""


def test_mknod_makes_fifos_and_device_nodes(ns: Namespace, env: int) -> None:
    fifo = ns.mknod(env, b"fifo", stat.S_IFIFO | 0o600, 0, OWNER)
    dev = ns.mknod(env, b"null", stat.S_IFCHR | 0o666, 0x0103, OWNER)
    assert stat.S_ISFIFO(fifo.mode)
    assert (stat.S_ISCHR(dev.mode), dev.rdev) == (True, 0x0103)


def test_symlink_keeps_its_target(ns: Namespace, env: int) -> None:
    link = ns.symlink(env, b"link", b"../some/where", OWNER)
    assert (link.mode, link.size) == (stat.S_IFLNK | 0o777, len(b"../some/where"))
    assert ns.readlink(link.ino) == b"../some/where"
    with pytest.raises(errors.InvalidArgument):
        ns.readlink(env)


def test_an_existing_name_is_eexist_for_every_kind_of_creation(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"taken")
    attempts = [
        lambda: ns.mkdir(env, b"taken", 0o755, OWNER),
        lambda: mkfile(ns, env, b"taken"),
        lambda: ns.symlink(env, b"taken", b"x", OWNER),
        lambda: ns.create(env, b"taken", 0o644, OWNER),
    ]
    for attempt in attempts:
        with pytest.raises(errors.AlreadyExists) as caught:
            attempt()
        assert caught.value.errno == errno.EEXIST


def test_creating_under_a_file_is_enotdir(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    with pytest.raises(errors.NotADirectory) as caught:
        ns.mkdir(f.ino, b"sub", 0o755, OWNER)
    assert caught.value.errno == errno.ENOTDIR


def test_setgid_directory_gives_its_group_and_its_setgid_bit_to_new_directories(ns: Namespace, env: int) -> None:
    shared = ns.mkdir(env, b"shared", 0o2775, Owner(1000, 4242))
    assert shared.mode & stat.S_ISGID
    sub = ns.mkdir(shared.ino, b"sub", 0o755, Owner(2000, 2000))
    f = mkfile(ns, shared.ino, b"f")
    link = ns.symlink(shared.ino, b"l", b"f", Owner(2000, 2000))
    assert (sub.uid, sub.gid, sub.mode) == (2000, 4242, stat.S_IFDIR | stat.S_ISGID | 0o755)
    assert (f.uid, f.gid, f.mode) == (1000, 4242, REG)
    assert (link.uid, link.gid) == (2000, 4242)


def test_without_setgid_new_inodes_take_the_creators_group(ns: Namespace, env: int) -> None:
    plain = ns.mkdir(env, b"plain", 0o775, Owner(1000, 4242))
    sub = ns.mkdir(plain.ino, b"sub", 0o755, Owner(2000, 2000))
    assert (sub.gid, sub.mode & stat.S_ISGID) == (2000, 0)


def test_creating_and_removing_an_entry_changes_the_parents_mtime_and_ctime(ns: Namespace, env: int) -> None:
    before = ns.getattr(env)
    mkfile(ns, env, b"f")
    after_create = ns.getattr(env)
    assert after_create.mtime_ns > before.mtime_ns
    assert after_create.ctime_ns == after_create.mtime_ns
    ns.unlink(env, b"f")
    after_unlink = ns.getattr(env)
    assert after_unlink.mtime_ns > after_create.mtime_ns
    assert after_unlink.ctime_ns == after_unlink.mtime_ns


def test_rename_between_directories_changes_both_parents_times(ns: Namespace, env: int) -> None:
    a = ns.mkdir(env, b"a", 0o755, OWNER)
    b = ns.mkdir(env, b"b", 0o755, OWNER)
    f = mkfile(ns, a.ino, b"f")
    ns.rename(a.ino, b"f", b.ino, b"g", 0)
    moved = ns.getattr(f.ino)
    assert ns.getattr(a.ino).mtime_ns == ns.getattr(b.ino).mtime_ns == moved.ctime_ns
    assert moved.ctime_ns > f.ctime_ns
    assert moved.mtime_ns == f.mtime_ns  # a rename changes the inode's ctime only


# -- name limits ---------------------------------------------------------------------------


def test_a_255_byte_name_works_everywhere(ns: Namespace, env: int) -> None:
    name = b"n" * 255
    attrs = mkfile(ns, env, name)
    assert ns.lookup(env, name) == attrs
    ns.rename(env, name, env, b"m" * 255, 0)
    assert names_in(ns, env) == [b"m" * 255]


def test_a_256_byte_name_is_enametoolong_on_lookup_and_creation(ns: Namespace, env: int) -> None:
    name = b"n" * 256
    attempts = [
        lambda: ns.lookup(env, name),
        lambda: mkfile(ns, env, name),
        lambda: ns.mkdir(env, name, 0o755, OWNER),
        lambda: ns.symlink(env, name, b"x", OWNER),
        lambda: ns.create(env, name, 0o644, OWNER),
        lambda: ns.unlink(env, name),
    ]
    for attempt in attempts:
        with pytest.raises(errors.NameTooLong) as caught:
            attempt()
        assert caught.value.errno == errno.ENAMETOOLONG
    assert names_in(ns, env) == []


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_invalid_names_are_einval(ns: Namespace, env: int, name: bytes) -> None:
    with pytest.raises(errors.InvalidName) as caught:
        mkfile(ns, env, name)
    assert caught.value.errno == errno.EINVAL


def test_lookup_of_a_missing_name_is_enoent(ns: Namespace, env: int) -> None:
    with pytest.raises(errors.NotFound) as caught:
        ns.lookup(env, b"missing")
    assert caught.value.errno == errno.ENOENT


# -- readdir -------------------------------------------------------------------------------


def test_readdir_pages_through_more_than_one_batch_in_name_order(ns: Namespace, env: int) -> None:
    made = sorted(f"file-{i:04d}".encode() for i in range(250))
    for name in made:
        mkfile(ns, env, name)
    seen: list[bytes] = []
    after = b""
    pages = 0
    while page := ns.readdir(env, after, 100):
        pages += 1
        seen += [name for name, _ in page]
        after = page[-1][0]
    assert pages == 3
    assert seen == made


def test_readdir_after_a_name_that_was_removed_goes_on_with_the_next(ns: Namespace, env: int) -> None:
    for name in (b"a", b"b", b"c"):
        mkfile(ns, env, name)
    ns.unlink(env, b"b")
    assert [name for name, _ in ns.readdir(env, b"b", 10)] == [b"c"]


def test_readdir_does_not_list_a_prefix_twice(ns: Namespace, env: int) -> None:
    for name in (b"a", b"ab", b"abc"):
        mkfile(ns, env, name)
    assert [name for name, _ in ns.readdir(env, b"a", 10)] == [b"ab", b"abc"]


def test_readdir_gives_the_attributes_of_each_entry(ns: Namespace, env: int) -> None:
    d = ns.mkdir(env, b"d", 0o700, OWNER)
    f = mkfile(ns, env, b"f")
    assert ns.readdir(env, b"", 10) == [(b"d", d), (b"f", f)]


def test_readdir_of_no_entries_lists_none(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"a")
    assert ns.readdir(env, b"", 0) == []


def test_readdir_of_a_file_is_enotdir(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    with pytest.raises(errors.NotADirectory):
        ns.readdir(f.ino, b"", 10)


# -- hard links and unlink -----------------------------------------------------------------


def test_hard_links_share_one_inode_and_count_its_names(store: Store, ns: Namespace, env: int) -> None:
    h = put(store, "f", DATA)
    f = ns.lookup(env, b"f")
    linked = ns.link(f.ino, env, b"g")
    assert (linked.ino, linked.nlink) == (f.ino, 2)
    assert ns.lookup(env, b"g").nlink == 2
    assert store.resource(h).refcount == 1  # one inode, one reference
    ns.unlink(env, b"f")
    assert ns.lookup(env, b"g").nlink == 1
    assert read(store, "g") == DATA
    ns.unlink(env, b"g")
    assert store.resource(h) is None
    store.sync()  # deletions wait for it
    assert list(store.blobs.digests()) == []


def test_hard_link_to_a_directory_is_eperm(ns: Namespace, env: int) -> None:
    d = ns.mkdir(env, b"d", 0o755, OWNER)
    with pytest.raises(errors.NotPermitted):
        ns.link(d.ino, env, b"d2")


def test_hard_link_across_environments_is_exdev(ns: Namespace, env: int) -> None:
    other = ns.mkdir(ROOT_INO, ENV2.encode(), 0o755, OWNER).ino
    f = mkfile(ns, env, b"f")
    with pytest.raises(errors.CrossNamespace) as caught:
        ns.link(f.ino, other, b"f")
    assert caught.value.errno == errno.EXDEV
    assert ns.getattr(f.ino).nlink == 1


def test_unlink_of_a_directory_is_eisdir_and_rmdir_of_a_file_enotdir(ns: Namespace, env: int) -> None:
    ns.mkdir(env, b"d", 0o755, OWNER)
    mkfile(ns, env, b"f")
    with pytest.raises(errors.IsADirectory):
        ns.unlink(env, b"d")
    with pytest.raises(errors.NotADirectory):
        ns.rmdir(env, b"f")
    assert names_in(ns, env) == [b"d", b"f"]


def test_an_inode_unlinked_while_open_lives_on_until_its_last_close(store: Store, ns: Namespace, env: int) -> None:
    h = put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    store.opens.opened(ino)
    ns.unlink(env, b"f")
    with pytest.raises(errors.NotFound):
        ns.lookup(env, b"f")
    orphan = ns.getattr(ino)
    assert (orphan.nlink, orphan.size) == (0, len(DATA))
    assert orphans(store) == [ino]
    reader = store.content.checked_open(ino)
    try:
        assert reader.pread(len(DATA), 0) == DATA
    finally:
        reader.close()
    assert store.resource(h).refcount == 1
    store.content.closed(ino)
    with pytest.raises(errors.NotFound):
        ns.getattr(ino)
    assert store.resource(h) is None
    assert orphans(store) == []
    store.sync()  # deletions wait for it
    assert list(store.blobs.digests()) == []


def test_an_inode_unlinked_while_open_cannot_be_linked_again(store: Store, ns: Namespace, env: int) -> None:
    """As linkat(2) answers for an unlinked file: otherwise recovery would delete it under its new name."""
    put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    store.opens.opened(ino)
    ns.unlink(env, b"f")
    with pytest.raises(errors.NotFound) as caught:
        ns.link(ino, env, b"g")
    assert caught.value.errno == errno.ENOENT
    assert names_in(ns, env) == []
    assert orphans(store) == [ino]
    assert find_problems(store) == []


def test_an_orphan_stays_while_any_of_its_handles_is_open(store: Store, ns: Namespace, env: int) -> None:
    h = put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    store.opens.opened(ino)
    store.opens.opened(ino)
    ns.unlink(env, b"f")
    store.content.closed(ino)
    assert ns.getattr(ino).nlink == 0
    assert store.resource(h).refcount == 1
    store.content.closed(ino)
    assert store.resource(h) is None


def test_closing_a_linked_file_deletes_nothing(store: Store, ns: Namespace, env: int) -> None:
    h = put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    store.opens.opened(ino)
    store.content.closed(ino)
    assert ns.getattr(ino).nlink == 1
    assert store.resource(h).refcount == 1


def test_a_file_renamed_over_while_open_becomes_an_orphan(store: Store, ns: Namespace, env: int) -> None:
    old = put(store, "target", DATA)
    put(store, "new", b"replacement")
    victim = ns.lookup(env, b"target").ino
    store.opens.opened(victim)
    ns.rename(env, b"new", env, b"target", 0)
    assert read(store, "target") == b"replacement"
    assert ns.getattr(victim).nlink == 0
    assert store.resource(old).refcount == 1
    store.content.closed(victim)
    assert store.resource(old) is None


def test_an_orphan_left_open_at_close_goes_at_the_next_open(store_path: Path) -> None:
    path = store_path
    store = Store.open(path)
    h = put(store, "f", DATA)
    ino = store.namespace.lookup(store.namespace.lookup(ROOT_INO, ENV.encode()).ino, b"f").ino
    store.opens.opened(ino)
    store.remove_for_environment(ENV, "f")
    store.close()  # the handle is still "open": as if the process had died
    with Store.open(path) as reopened:
        assert orphans(reopened) == []
        with pytest.raises(errors.NotFound):
            reopened.namespace.getattr(ino)
        assert reopened.resource(h) is None


# -- rename ----------------------------------------------------------------------------------


def test_rename_moves_a_file_and_replaces_the_target(store: Store, ns: Namespace, env: int) -> None:
    put(store, "a", b"aaa")
    old = put(store, "b", b"bbb")
    a = ns.lookup(env, b"a")
    ns.rename(env, b"a", env, b"b", 0)
    assert names_in(ns, env) == [b"b"]
    assert ns.lookup(env, b"b").ino == a.ino
    assert read(store, "b") == b"aaa"
    assert store.resource(old) is None


def test_rename_noreplace_over_an_existing_name_is_eexist(store: Store, ns: Namespace, env: int) -> None:
    put(store, "a", b"aaa")
    put(store, "b", b"bbb")
    with pytest.raises(errors.AlreadyExists) as caught:
        ns.rename(env, b"a", env, b"b", RENAME_NOREPLACE)
    assert caught.value.errno == errno.EEXIST
    assert (read(store, "a"), read(store, "b")) == (b"aaa", b"bbb")


@pytest.mark.parametrize("flags", [4, RENAME_NOREPLACE | 2, 1 << 20], ids=["whiteout", "noreplace|exchange", "unknown"])
def test_rename_with_flags_it_cannot_honour_is_einval(store: Store, ns: Namespace, env: int, flags: int) -> None:
    put(store, "a", b"aaa")
    with pytest.raises(errors.InvalidArgument) as caught:
        ns.rename(env, b"a", env, b"b", flags)
    assert caught.value.errno == errno.EINVAL
    assert names_in(ns, env) == [b"a"]


def test_rename_noreplace_to_a_free_name_renames(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"a")
    ns.rename(env, b"a", env, b"b", RENAME_NOREPLACE)
    assert ns.lookup(env, b"b").ino == f.ino
    assert names_in(ns, env) == [b"b"]


def test_rename_exchange_swaps_a_file_and_a_directory(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    d = ns.mkdir(env, b"d", 0o755, OWNER)
    ns.rename(env, b"f", env, b"d", RENAME_EXCHANGE)
    assert ns.lookup(env, b"f").ino == d.ino
    assert ns.lookup(env, b"d").ino == f.ino


def test_rename_exchange_across_directories_moves_directory_links(ns: Namespace, env: int) -> None:
    a = ns.mkdir(env, b"a", 0o755, OWNER)
    b = ns.mkdir(env, b"b", 0o755, OWNER)
    sub = ns.mkdir(a.ino, b"sub", 0o755, OWNER)
    f = mkfile(ns, b.ino, b"f")
    ns.rename(a.ino, b"sub", b.ino, b"f", RENAME_EXCHANGE)
    assert ns.lookup(a.ino, b"sub").ino == f.ino
    assert ns.lookup(b.ino, b"f").ino == sub.ino
    assert (ns.getattr(a.ino).nlink, ns.getattr(b.ino).nlink) == (2, 3)
    ns.mkdir(sub.ino, b"x", 0o755, OWNER)
    with pytest.raises(errors.InvalidArgument):  # sub's parent is now b: b cannot go into it
        ns.rename(env, b"b", sub.ino, b"b", 0)


def test_rename_exchange_with_a_missing_name_is_enoent(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"f")
    with pytest.raises(errors.NotFound):
        ns.rename(env, b"f", env, b"missing", RENAME_EXCHANGE)
    assert names_in(ns, env) == [b"f"]


def test_moving_a_directory_into_itself_is_einval(ns: Namespace, env: int) -> None:
    a = ns.mkdir(env, b"a", 0o755, OWNER)
    b = ns.mkdir(a.ino, b"b", 0o755, OWNER)
    for destination in (a.ino, b.ino):
        with pytest.raises(errors.InvalidArgument) as caught:
            ns.rename(env, b"a", destination, b"moved", 0)
        assert caught.value.errno == errno.EINVAL
    assert names_in(ns, env) == [b"a"]


def test_exchanging_a_directory_with_one_inside_it_is_einval(ns: Namespace, env: int) -> None:
    a = ns.mkdir(env, b"a", 0o755, OWNER)
    ns.mkdir(a.ino, b"b", 0o755, OWNER)
    with pytest.raises(errors.InvalidArgument):
        ns.rename(env, b"a", a.ino, b"b", RENAME_EXCHANGE)


def test_rename_across_environments_is_exdev(ns: Namespace, env: int) -> None:
    other = ns.mkdir(ROOT_INO, ENV2.encode(), 0o755, OWNER).ino
    mkfile(ns, env, b"f")
    with pytest.raises(errors.CrossNamespace) as caught:
        ns.rename(env, b"f", other, b"f", 0)
    assert caught.value.errno == errno.EXDEV
    assert names_in(ns, env) == [b"f"]
    assert names_in(ns, other) == []


def test_rename_over_a_non_empty_directory_is_enotempty(ns: Namespace, env: int) -> None:
    ns.mkdir(env, b"src", 0o755, OWNER)
    dst = ns.mkdir(env, b"dst", 0o755, OWNER)
    mkfile(ns, dst.ino, b"inside")
    with pytest.raises(errors.NotEmpty) as caught:
        ns.rename(env, b"src", env, b"dst", 0)
    assert caught.value.errno == errno.ENOTEMPTY
    assert names_in(ns, dst.ino) == [b"inside"]


def test_rename_of_a_directory_over_an_empty_one_replaces_it(ns: Namespace, env: int) -> None:
    src = ns.mkdir(env, b"src", 0o755, OWNER)
    dst = ns.mkdir(env, b"dst", 0o755, OWNER)
    ns.rename(env, b"src", env, b"dst", 0)
    assert ns.lookup(env, b"dst").ino == src.ino
    assert ns.getattr(env).nlink == 3
    with pytest.raises(errors.NotFound):
        ns.getattr(dst.ino)


def test_rename_of_a_file_over_a_directory_is_eisdir(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"f")
    ns.mkdir(env, b"d", 0o755, OWNER)
    with pytest.raises(errors.IsADirectory) as caught:
        ns.rename(env, b"f", env, b"d", 0)
    assert caught.value.errno == errno.EISDIR


def test_rename_of_a_directory_over_a_file_is_enotdir(ns: Namespace, env: int) -> None:
    mkfile(ns, env, b"f")
    ns.mkdir(env, b"d", 0o755, OWNER)
    with pytest.raises(errors.NotADirectory) as caught:
        ns.rename(env, b"d", env, b"f", 0)
    assert caught.value.errno == errno.ENOTDIR
    assert names_in(ns, env) == [b"d", b"f"]


def test_rename_of_a_directory_moves_one_link_between_parents(ns: Namespace, env: int) -> None:
    a = ns.mkdir(env, b"a", 0o755, OWNER)
    b = ns.mkdir(env, b"b", 0o755, OWNER)
    ns.mkdir(a.ino, b"sub", 0o755, OWNER)
    assert (ns.getattr(a.ino).nlink, ns.getattr(b.ino).nlink) == (3, 2)
    ns.rename(a.ino, b"sub", b.ino, b"sub", 0)
    assert (ns.getattr(a.ino).nlink, ns.getattr(b.ino).nlink) == (2, 3)
    with pytest.raises(errors.InvalidArgument):  # sub now lives under b
        ns.rename(env, b"b", ns.lookup(b.ino, b"sub").ino, b"b", 0)


def test_rename_of_two_names_of_one_inode_does_nothing(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    ns.link(f.ino, env, b"g")
    ns.rename(env, b"f", env, b"g", 0)
    assert names_in(ns, env) == [b"f", b"g"]
    assert ns.getattr(f.ino).nlink == 2


def test_rename_in_global_namespace_works(ns: Namespace) -> None:
    glob = ns.lookup(ROOT_INO, GLOBAL_DIR).ino
    f = mkfile(ns, glob, b"a")
    ns.rename(glob, b"a", glob, b"b", 0)
    assert ns.lookup(glob, b"b").ino == f.ino


# -- setattr -----------------------------------------------------------------------------------


def test_setattr_changes_mode_bits_owner_and_times_and_keeps_the_type(ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    changed = ns.setattr(f.ino, mode=stat.S_IFDIR | 0o4711, uid=7, gid=8, atime_ns=5, mtime_ns=6)
    assert (changed.mode, changed.uid, changed.gid) == (stat.S_IFREG | 0o4711, 7, 8)
    assert (changed.atime_ns, changed.mtime_ns) == (5, 6)
    assert changed.ctime_ns > f.ctime_ns
    assert ns.getattr(f.ino) == changed


# -- extended attributes -------------------------------------------------------------------------


def test_xattrs_set_get_list_remove(store: Store, ns: Namespace, env: int) -> None:
    ino = mkfile(ns, env, b"f").ino
    store.xattrs.set(ino, b"user.colour", b"blue")
    store.xattrs.set(ino, b"trusted.x", b"\0binary\xff")
    store.xattrs.set(ino, b"security.capability", b"caps")
    assert store.xattrs.get(ino, b"user.colour") == b"blue"
    assert store.xattrs.get(ino, b"trusted.x") == b"\0binary\xff"
    assert sorted(store.xattrs.names(ino)) == [b"security.capability", b"trusted.x", b"user.colour"]
    store.xattrs.remove(ino, b"user.colour")
    assert sorted(store.xattrs.names(ino)) == [b"security.capability", b"trusted.x"]
    with pytest.raises(errors.NoAttribute) as caught:
        store.xattrs.get(ino, b"user.colour")
    assert caught.value.errno == errno.ENODATA
    with pytest.raises(errors.NoAttribute):
        store.xattrs.remove(ino, b"user.colour")


def test_setting_an_xattr_changes_ctime(store: Store, ns: Namespace, env: int) -> None:
    f = mkfile(ns, env, b"f")
    store.xattrs.set(f.ino, b"user.a", b"1")
    assert ns.getattr(f.ino).ctime_ns > f.ctime_ns


def test_xattrs_of_a_directory_and_a_symlink(store: Store, ns: Namespace, env: int) -> None:
    link = ns.symlink(env, b"l", b"t", OWNER)
    store.xattrs.set(env, b"user.d", b"dir")
    store.xattrs.set(link.ino, b"user.l", b"link")
    assert (store.xattrs.get(env, b"user.d"), store.xattrs.get(link.ino, b"user.l")) == (b"dir", b"link")


def test_xattrs_go_with_their_inode(store: Store, ns: Namespace, env: int) -> None:
    ino = mkfile(ns, env, b"f").ino
    store.xattrs.set(ino, b"user.a", b"1")
    ns.unlink(env, b"f")
    with store.catalog.read() as tx:
        assert list(tx.all_xattrs()) == []


def test_xattr_name_of_255_bytes_works_256_is_einval(store: Store, ns: Namespace, env: int) -> None:
    ino = mkfile(ns, env, b"f").ino
    longest = b"user." + b"n" * 250
    store.xattrs.set(ino, longest, b"v")
    assert store.xattrs.get(ino, longest) == b"v"
    with pytest.raises(errors.InvalidArgument) as caught:
        store.xattrs.set(ino, longest + b"n", b"v")
    assert caught.value.errno == errno.EINVAL
    assert store.xattrs.names(ino) == [longest]


def test_xattr_value_of_64_kib_works_one_byte_more_is_einval(store: Store, ns: Namespace, env: int) -> None:
    ino = mkfile(ns, env, b"f").ino
    value = bytes(range(256)) * 256
    assert len(value) == 65536
    store.xattrs.set(ino, b"user.big", value)
    assert store.xattrs.get(ino, b"user.big") == value
    with pytest.raises(errors.InvalidArgument):
        store.xattrs.set(ino, b"user.big", value + b"x")
    assert store.xattrs.get(ino, b"user.big") == value


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"system.posix_acl_default", b"security.selinux"])
def test_acl_and_selinux_attributes_are_eopnotsupp(store: Store, ns: Namespace, env: int, name: bytes) -> None:
    ino = mkfile(ns, env, b"f").ino
    for attempt in (lambda: store.xattrs.set(ino, name, b"\x02\0\0\0"), lambda: store.xattrs.get(ino, name),
                    lambda: store.xattrs.remove(ino, name)):
        with pytest.raises(errors.NotSupported) as caught:
            attempt()
        assert caught.value.errno == errno.EOPNOTSUPP
    assert store.xattrs.names(ino) == []


@pytest.mark.parametrize("name", [b"user.fusestore.blake3", b"user.fusestore.pid", b"user.fusestore.other"])
def test_reserved_xattr_names_are_eperm_to_set_and_remove(store: Store, ns: Namespace, env: int,
                                                          name: bytes) -> None:
    ino = mkfile(ns, env, b"f").ino
    with pytest.raises(errors.NotPermitted) as caught:
        store.xattrs.set(ino, name, b"0" * 64)
    assert caught.value.errno == errno.EPERM
    with pytest.raises(errors.NotPermitted):
        store.xattrs.remove(ino, name)


def test_blake3_xattr_shows_the_committed_hash(store: Store, ns: Namespace, env: int) -> None:
    h = put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    assert store.xattrs.get(ino, b"user.fusestore.blake3") == h.encode()
    assert store.xattrs.names(ino) == []


def test_blake3_xattr_is_enodata_while_a_change_is_staged(store: Store, ns: Namespace, env: int) -> None:
    put(store, "f", DATA)
    ino = ns.lookup(env, b"f").ino
    staged = store.writes.stage(ino, 0)
    with pytest.raises(errors.NoAttribute):
        store.xattrs.get(ino, b"user.fusestore.blake3")
    store.writes.abandon(staged)
    assert store.xattrs.get(ino, b"user.fusestore.blake3") == blake3.blake3(DATA).hexdigest().encode()


def test_expect_xattr_is_set_read_back_hidden_and_removed(store: Store, ns: Namespace, env: int) -> None:
    ino = mkfile(ns, env, b"f").ino
    h = blake3.blake3(DATA).hexdigest()
    store.xattrs.set(ino, b"user.fusestore.expect", f"  {h}\n".encode())
    assert store.xattrs.get(ino, b"user.fusestore.expect") == h.encode()
    assert store.xattrs.names(ino) == []
    store.xattrs.remove(ino, b"user.fusestore.expect")
    with pytest.raises(errors.NoAttribute):
        store.xattrs.get(ino, b"user.fusestore.expect")
    with pytest.raises(errors.NoAttribute):
        store.xattrs.remove(ino, b"user.fusestore.expect")


@pytest.mark.parametrize("value", [b"", b"not hex", b"ab" * 31, b"ab" * 33])
def test_expect_xattr_must_be_a_blake3_hash(store: Store, ns: Namespace, env: int, value: bytes) -> None:
    ino = mkfile(ns, env, b"f").ino
    with pytest.raises(errors.InvalidArgument):
        store.xattrs.set(ino, b"user.fusestore.expect", value)
    with pytest.raises(errors.NoAttribute):
        store.xattrs.get(ino, b"user.fusestore.expect")


def test_expect_xattr_on_a_directory_is_einval(store: Store, env: int) -> None:
    with pytest.raises(errors.InvalidArgument):
        store.xattrs.set(env, b"user.fusestore.expect", b"0" * 64)


def test_xattrs_of_a_missing_inode_are_enoent(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.xattrs.get(999_999, b"user.a")
    with pytest.raises(errors.NotFound):
        store.xattrs.set(999_999, b"user.a", b"1")
    with pytest.raises(errors.NotFound):
        store.xattrs.names(999_999)
