"""The anchor: a power loss takes the catalog back to its last checkpoint, a crash of the process does not.

A writer process does its work and dies without closing (``os._exit``, as
SIGKILL would leave it). A power loss is then made by hand: every page of
``data.mdb`` is taken, at random, from a copy made at the last checkpoint
or from what the writer left (any subset of the pages written since a sync
may reach the disk), and the anchor is made to come from another boot.
The writer frees no blob after its last checkpoint and commits too little
for a background anchor: either would anchor the catalog again.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fusestore import Store, errors
from fusestore.catalog import FORMAT_VERSION, Catalog, rollback_due
from fusestore.catalog.anchor import SLOT_SIZE, AnchorFile
from fusestore.cli import fsck_cmd
from fusestore.store.fsck import find_problems

from .helpers import ENV, read, restart_machine

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096

WRITER = textwrap.dedent("""
    import io, os, shutil, sys
    from fusestore import Store
    from fusestore.catalog.anchoring import ANCHOR_EVERY
    from fusestore.store.owners import Owner

    store = Store.open(sys.argv[1])
    env = sys.argv[2]
    def put(name, data):
        store.put_for_environment(env, name, io.BytesIO(data), len(data))
    for number in range(200):
        put(f"kept-{number}", b"kept %d" % number)
    for name in ("overwritten", "its-twin"):  # shared content: a later overwrite frees no blob
        put(name, b"before the checkpoint")
    for name in ("removed", "removed-twin"):  # (a freed blob's deletion would anchor the catalog: W5)
        put(name, b"removed after the checkpoint")
    directory = store.namespace.lookup(1, env.encode()).ino
    _, fsynced = store.namespace.create(directory, b"fsynced", 0o644, Owner(0, 0))
    fsynced.write(b"F" * 8192, 0)
    store.writes.sync_staged(fsynced)
    store.sync()
    fsynced.write(b"G" * 4096, 8192)  # after the fsync
    _, unsynced = store.namespace.create(directory, b"unsynced", 0o644, Owner(0, 0))
    unsynced.write(b"U" * 5000, 0)
    store.sync()  # covers the record of "unsynced", not its bytes
    shutil.copy(os.path.join(sys.argv[1], "catalog", "data.mdb"), sys.argv[3])  # the disk as that sync left it
    for number in range(ANCHOR_EVERY // 4):  # a few transactions each: too few for a background anchor
        put(f"late-{number}", os.urandom(64))
    put("overwritten", b"after the checkpoint")
    store.remove_for_environment(env, "removed")
    os._exit(0)
""")


def _run_writer(store: Path, tmp_path: Path) -> Path:
    checkpointed = tmp_path / "checkpointed.mdb"
    subprocess.run([sys.executable, "-c", WRITER, str(store), ENV, str(checkpointed)], cwd=REPO, check=True,
                   timeout=120)
    return checkpointed


def _tear(data_file: Path, checkpointed: Path, seed: int) -> None:
    """What a power loss may leave of ``data_file``: each page from the checkpoint's copy or the latest."""
    rng = random.Random(seed)
    old, new = checkpointed.read_bytes(), data_file.read_bytes()
    torn = bytearray()
    for start in range(0, max(len(old), len(new)), PAGE):
        page_old, page_new = old[start:start + PAGE], new[start:start + PAGE]
        torn += page_new if page_new and (not page_old or rng.random() < 0.5) else page_old
    data_file.write_bytes(bytes(torn))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_power_loss_goes_back_to_the_last_checkpoint(tmp_path: Path, seed: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    store_path = tmp_path / "store"
    checkpointed = _run_writer(store_path, tmp_path)
    _tear(store_path / "catalog" / "data.mdb", checkpointed, seed)
    restart_machine(store_path / "catalog")
    assert rollback_due(store_path / "catalog") is not None or seed_left_the_checkpoint(store_path, checkpointed)

    with caplog.at_level(logging.INFO, logger="fusestore"), Store.open(store_path) as store:
        assert [read(store, f"kept-{number}") for number in range(200)] == [b"kept %d" % n for n in range(200)]
        assert read(store, "overwritten") == b"before the checkpoint"
        assert read(store, "removed") == b"removed after the checkpoint"
        assert read(store, "fsynced") == b"F" * 8192  # what its fsync covered, and nothing after it
        assert read(store, "unsynced") == b""  # no fsync covered its bytes: none are trusted
        with pytest.raises(errors.NotFound):
            read(store, "late-0")
        assert find_problems(store) == []
    text = caplog.text
    assert "went back to its last checkpoint" in text or "its last change" in text
    assert re.search(rf"kept the 8192 bytes of /{ENV}/fsynced .*its last fsync made durable", text)
    assert re.search(rf"what was written to /{ENV}/unsynced .*was never fsynced", text)
    with Store.open(store_path) as store:  # the next open is an ordinary one
        assert read(store, "fsynced") == b"F" * 8192 and find_problems(store) == []


def seed_left_the_checkpoint(store_path: Path, checkpointed: Path) -> bool:
    """Whether the tear happened to keep the checkpoint's meta pages (then no rollback is due)."""
    return (store_path / "catalog" / "data.mdb").read_bytes()[:2 * PAGE] == checkpointed.read_bytes()[:2 * PAGE]


def test_a_crash_of_the_process_alone_keeps_every_commit(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    _run_writer(store_path, tmp_path)
    assert rollback_due(store_path / "catalog") is None  # same boot: nothing to take back
    with Store.open(store_path) as store:
        assert read(store, "late-0") != b""
        assert read(store, "overwritten") == b"after the checkpoint"
        with pytest.raises(errors.NotFound):
            read(store, "removed")
        assert read(store, "fsynced") == b"F" * 8192 + b"G" * 4096  # every write that returned
        assert read(store, "unsynced") == b"U" * 5000
        assert find_problems(store) == []


def test_read_only_tools_refuse_a_catalog_due_a_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = tmp_path / "store"
    checkpointed = _run_writer(store_path, tmp_path)
    shutil.copy(store_path / "catalog" / "data.mdb", tmp_path / "latest.mdb")
    restart_machine(store_path / "catalog")
    due = rollback_due(store_path / "catalog")
    assert due is not None and due[0] > due[1]
    before = {path: path.read_bytes() for path in store_path.rglob("*") if path.is_file()}

    with pytest.raises(errors.NeedsRecovery, match="fsck --repair"):
        Catalog(store_path / "catalog", readonly=True)
    stats = subprocess.run([sys.executable, "-m", "fusestore", "stats", str(store_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 2 and "mount the store or run fusestore fsck --repair" in stats.stderr
    status = fsck_cmd.check(store_path, verify=False, repair=False, out=sys.stdout, err=sys.stderr)
    out, err = capsys.readouterr()
    assert status == 1
    assert f"recovery would take the catalog back to its last checkpoint, transaction {due[1]}" in out
    assert "run fsck --repair" in err
    assert {path: path.read_bytes() for path in store_path.rglob("*") if path.is_file()} == before

    assert fsck_cmd.check(store_path, verify=False, repair=True, out=sys.stdout, err=sys.stderr) == 1
    out, _ = capsys.readouterr()
    assert "repaired: ran recovery" in out and "not repaired" not in out
    assert fsck_cmd.check(store_path, verify=False, repair=False, out=sys.stdout, err=sys.stderr) == 0
    del checkpointed


def test_a_torn_anchor_slot_leaves_the_one_before(tmp_path: Path) -> None:
    anchors = AnchorFile(tmp_path / "anchor")
    try:
        metas = bytes(range(256)) * 32
        anchors.write(5, metas, b"b" * 16, closed=False)
        anchors.write(9, metas, b"c" * 16, closed=True)
        last = anchors.last()
        assert last is not None and (last.sequence, last.txnid, last.boot, last.closed) == (2, 9, b"c" * 16, True)
        with open(tmp_path / "anchor", "r+b") as file:  # the write of sequence 2 (slot 0) torn
            file.seek(60)
            file.write(b"torn")
        last = anchors.last()
        assert last is not None and (last.sequence, last.txnid, last.closed) == (1, 5, False)
        assert anchors.write(11, metas, b"d" * 16, closed=False).sequence == 2
        assert os.path.getsize(tmp_path / "anchor") > SLOT_SIZE
    finally:
        anchors.close()
    assert AnchorFile(tmp_path / "missing", readonly=True).last() is None


def test_a_format_1_store_is_upgraded(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    with Store.open(store_path) as store:
        data = b"written by format 1"
        store.put_for_environment(ENV, "old", __import__("io").BytesIO(data), len(data))
        with store.catalog.write() as tx:
            tx.meta_put(b"format", b"1")
    (store_path / "catalog" / "anchor").unlink()  # format 1 had none
    with Store.open(store_path) as store:
        assert read(store, "old") == b"written by format 1"
        with store.catalog.read() as tx:
            assert tx.meta_get(b"format") == str(FORMAT_VERSION).encode()
    assert AnchorFile(store_path / "catalog" / "anchor", readonly=True).last() is not None


def test_a_power_loss_stays_known_until_recovery_has_run(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    _run_writer(store_path, tmp_path)
    restart_machine(store_path / "catalog")
    Catalog(store_path / "catalog").close()  # a writer that opened and closed without recovering
    with Store.open(store_path) as store:
        assert read(store, "unsynced") == b""  # still recovered as after a power loss
        assert read(store, "fsynced") == b"F" * 8192
    last = AnchorFile(store_path / "catalog" / "anchor", readonly=True).last()
    assert last is not None and last.closed
