"""Compaction through real mounts: the daemon gives deleted files' space back by itself, and reads stay right.

And on the power-loss simulator (``tests/powercut.py``): a child compacts a
store on it and pauses at a point a pack store subclass picks, where the
power is cut; the store, opened on what survived, must read every file as
it was, with exactly the pack files its catalog knows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fusestore import Store

from .helpers import live_chunk_bytes, read, restart_machine
from .mount_helpers import Mount, eventually, require_fuse
from .test_compaction import assert_packs_accounted_for, data_of, sparse_store
from .test_power_loss import cut, lmdb_verify, simulated, wait_for

REPO = Path(__file__).resolve().parent.parent


def pack_file_bytes(store: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(store / "packs"))


def test_a_mount_gives_the_space_of_deleted_files_back_by_itself(mount: Mount, env_dir: Path) -> None:
    files = {f"f{number}": os.urandom(200_000) for number in range(40)}
    files["big"] = os.urandom(4 << 20)
    for name, data in files.items():
        (env_dir / name).write_bytes(data)
    mount.remount()  # its close sealed the pack the daemon wrote to
    kept = {name: data for number, (name, data) in enumerate(files.items()) if number % 10 == 0 or name == "big"}
    with open(env_dir / "big", "rb") as held:
        head = held.read(4096)  # open across the compaction: the rest is read from where the chunks went
        for name in set(files) - set(kept):
            (env_dir / name).unlink()
        live = sum(len(data) for data in kept.values())
        assert pack_file_bytes(mount.store) > 2 * live
        assert eventually(lambda: pack_file_bytes(mount.store) == live, timeout=60), pack_file_bytes(mount.store)
        assert head + held.read() == kept["big"]
    for name, data in kept.items():
        assert (env_dir / name).read_bytes() == data, name
    mount.remount()
    for name, data in kept.items():
        assert (env_dir / name).read_bytes() == data, name


def test_the_command_refuses_a_mounted_store(mount: Mount) -> None:
    result = subprocess.run([sys.executable, "-m", "fusestore", "compact", str(mount.store)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"fusestore: store {mount.store} is in use by process"), result.stderr
    assert "a mount compacts its store itself" in result.stderr


PAUSING = textwrap.dedent("""
    import os, sys, time
    from fusestore import Store
    from fusestore.pool import LocalPackStore

    store_path, point, marker = sys.argv[1:4]

    class Pausing(LocalPackStore):
        armed = False

        def barrier(self):
            self.pause("before the barrier")
            super().barrier()
            self.pause("after the barrier")

        def delete(self, pack):
            self.pause("before the deletion")
            super().delete(pack)
            self.pause("after the deletion")

        def pause(self, here):
            if self.armed and here == point:
                os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
                time.sleep(3600)

    packs = Pausing(store_path + "/packs")
    store = Store.open(store_path, packs=packs)
    packs.armed = True
    store.compact()
    raise SystemExit("the compaction never reached " + point)
""")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", ["before the barrier", "after the barrier", "before the deletion",
                                   "after the deletion"])
def test_a_power_cut_at_any_point_of_a_compaction_loses_nothing(tmp_path: Path, point: str) -> None:
    """On the power-loss simulator, with none, some or all of what no fsync covered surviving the cut."""
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for number, keep in enumerate((0.0, 0.5, 1.0)):
        backing, marker = tmp_path / f"backing-{number}", tmp_path / f"reached-{number}"
        kept = sparse_store(backing / "store")
        with simulated(backing, mnt, seed=number, keep=keep) as sim:
            child = subprocess.Popen([sys.executable, "-c", PAUSING, str(mnt / "store"), point, str(marker)],
                                     cwd=REPO, stderr=subprocess.PIPE)
            wait_for(lambda reached=marker, paused=child: reached.exists() or paused.poll() is not None, 120,
                     f"the compaction {point}")
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            cut(sim, child, "compaction")
        restart_machine(backing / "store" / "catalog")
        with Store.open(backing / "store") as store:
            for name in kept:
                assert read(store, name) == data_of(name), (keep, name)
            assert_packs_accounted_for(store)
            store.compact()
            assert pack_file_bytes(backing / "store") == live_chunk_bytes(store)
        assert lmdb_verify(backing / "store" / "catalog") is None
