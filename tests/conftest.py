"""Shared fixtures: real stores in temporary directories, mounts, a clock tests move by hand (helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fusestore import Store
from fusestore.pool.memory_staging import ENVIRONMENT as MEMORY_STAGING

from .helpers import ENV, ManualClock

if TYPE_CHECKING:
    from .mount_helpers import Mount


@pytest.fixture(autouse=True, scope="session")
def memory_staging() -> Iterator[Path]:
    """The memory staging directories of every store of the run (and its daemons'), removed at its end."""
    root = Path(tempfile.mkdtemp(prefix="fusestore-tests-", dir="/dev/shm"))
    os.environ[MEMORY_STAGING] = str(root)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path, clock: ManualClock) -> Iterator[Store]:
    with Store.open(store_path, clock=clock) as opened:
        yield opened


@pytest.fixture
def mount(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator["Mount"]:
    """A fresh store mounted at tmp_path/mnt; unmounted even when the test fails.

    The daemon's log is printed when the test fails, so a failure shows
    what the filesystem saw.
    """
    from .mount_helpers import Mount, require_fuse

    require_fuse()
    mounted = Mount(tmp_path / "store", tmp_path / "mnt", tmp_path / "daemon.log")
    mounted.mount()
    try:
        yield mounted
    finally:
        mounted.release(failed=outcome_failed(request))


@pytest.fixture
def mount_with(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., "Mount"]]:
    """Mounts with extra options; ``shared=True`` puts one where other uids can reach it.

    (pytest's temporary directories are 0700: a shared mount lives under a
    fresh 0755 directory in /tmp instead.)
    """
    from .mount_helpers import Mount, require_fuse

    made: list[tuple[Mount, Path | None]] = []

    def make(*extra: str, shared: bool = False) -> Mount:
        require_fuse()
        if shared:
            base = Path(tempfile.mkdtemp(prefix="fusestore-shared-", dir="/tmp"))
            base.chmod(0o755)
        else:
            base = tmp_path / f"mount{len(made)}"
            base.mkdir()
        mounted = Mount(base / "store", base / "mnt", base / "daemon.log", extra=list(extra))
        made.append((mounted, base if shared else None))
        mounted.mount()
        return mounted

    yield make
    failed = outcome_failed(request)
    for mounted, base in made:
        try:
            mounted.release(failed=failed)
        finally:
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)


def outcome_failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test using a fixture failed (see pytest_runtest_makereport below)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


@pytest.fixture
def env_dir(mount: "Mount") -> Path:
    """An environment directory inside the mount."""
    path = mount.path / ENV
    path.mkdir()
    return path


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
