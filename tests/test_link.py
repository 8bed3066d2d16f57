"""Linking content one already has, on a real mount: ``fusestore link``, ``link()`` and ``scripts/link.sh``.

Each test drives all three clients the same way and checks what the mount
and the pool hold afterwards: a link adds no blob, a refusal creates nothing,
and the exit status tells which (0 linked or copied, 1 other error, 2 bad
usage, 3 content unknown to the store, 4 refused). Refusals come from the
daemon itself: a uid that may not write the destination (a second mount
with --allow-other), a client answering for content it does not hold, an
answer sent after the request expired.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from fusestore.client import link as link_module
from fusestore.client.link import link

from .helpers import ENV
from .mount_helpers import FUSESTORE, NOBODY, Mount

LINK_SH = Path(__file__).resolve().parents[1] / "scripts" / "link.sh"
DATA = random.Random(11).randbytes(300_000)
# A path that needs percent-encoding (space, UTF-8, '%', '+', '#') under directories that do not exist yet.
NESTED = "with space/dé%+#/not yet/file name.bin"


@dataclass
class Run:
    code: int
    out: str
    err: str


def _completed(result: subprocess.CompletedProcess[str]) -> Run:
    return Run(result.returncode, result.stdout, result.stderr)


def _drop_to_nobody(code: str) -> list[str]:
    """Python that imports fusestore as root (the interpreter lives under /root), then runs ``code`` as nobody."""
    prelude = ("import os, sys\nimport fusestore.cli, fusestore.client.link\n"
               f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n")
    return [sys.executable, "-c", prelude + code]


def run_cli(args: list[str], *, upload: bool = False, as_nobody: bool = False) -> Run:
    """``python -m fusestore link ...`` in a subprocess."""
    argv = ["link", *args, *(["--upload-if-missing"] if upload else [])]
    command = _drop_to_nobody("fusestore.cli.main(sys.argv[1:])") if as_nobody else FUSESTORE
    return _completed(subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60))


def run_function(args: list[str], *, upload: bool = False, as_nobody: bool = False) -> Run:
    """``link()`` in this process (or, as nobody, in a child that calls it)."""
    if as_nobody:
        code = ("o = fusestore.client.link.link(*sys.argv[1:5], upload_if_missing=sys.argv[5] == '1')\n"
                "print(o.message, file=sys.stdout if o.ok else sys.stderr); sys.exit(o.exit_code)")
        command = [*_drop_to_nobody(code), *args, "1" if upload else "0"]
        return _completed(subprocess.run(command, capture_output=True, text=True, timeout=60))
    outcome = link(*args, upload_if_missing=upload)
    return Run(outcome.exit_code, outcome.message if outcome.ok else "", "" if outcome.ok else outcome.message)


def run_script(args: list[str], *, as_nobody: bool = False, tools: Path | None = None) -> Run:
    """``scripts/link.sh ...``; ``tools`` is a directory put first on PATH (stand-in tools)."""
    environment = dict(os.environ)
    if tools is not None:
        environment["PATH"] = f"{tools}:{environment['PATH']}"
    identity = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}
    result = subprocess.run([str(LINK_SH), *args], capture_output=True, text=True, timeout=60,
                            env=environment, **identity)
    return _completed(result)


CLIENTS: dict[str, Callable[..., Run]] = {"cli": run_cli, "function": run_function, "script": run_script}
clients = pytest.mark.parametrize("client", list(CLIENTS))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def requests_left(mount: Mount) -> list[str]:
    return os.listdir(mount.path / ".requests")


def stored(mount: Mount, data: bytes = DATA, name: str = "original") -> None:
    """Put ``data`` in the store through the mount (closing commits it)."""
    (mount.path / ENV / name).write_bytes(data)


def local_copy(directory: Path, data: bytes = DATA, name: str = "local") -> Path:
    path = directory / name
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def pool(mount: Mount) -> tuple[int, int]:
    return mount.blob_count(), mount.pool_bytes()


# -- other mounts: shared with other users, short-lived requests ------------------------------


@pytest.fixture
def mount_factory(mount_with: Callable[..., Mount]) -> Callable[..., Mount]:
    """Mounts other uids can reach, each with an environment directory."""

    def make(*extra: str) -> Mount:
        mounted = mount_with(*extra, shared=True)
        (mounted.path / ENV).mkdir()
        return mounted

    return make


# -- linking --------------------------------------------------------------------------------------


@clients
def test_link_places_the_content_without_upload(client: str, env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    stored(mount)
    local = local_copy(tmp_path)
    before = pool(mount)
    run = CLIENTS[client]([str(mount.path), ENV, NESTED, str(local)])
    assert run.code == 0, run.err
    assert one_line(run.out).startswith("linked "), run.out
    assert (env_dir / NESTED).read_bytes() == DATA
    assert pool(mount) == before  # not one byte uploaded
    assert requests_left(mount) == []  # the request file was removed


@clients
def test_link_replaces_an_existing_file(client: str, env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    stored(mount)
    (env_dir / "target").write_bytes(b"old content")
    local = local_copy(tmp_path)
    run = CLIENTS[client]([str(mount.path), ENV, "target", str(local)])
    assert run.code == 0, run.err
    assert (env_dir / "target").read_bytes() == DATA


@clients
def test_empty_content_links(client: str, env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    stored(mount, b"")
    run = CLIENTS[client]([str(mount.path), ENV, "empty", str(local_copy(tmp_path, b""))])
    assert run.code == 0, run.err
    assert (env_dir / "empty").read_bytes() == b""


@clients
def test_content_the_store_lacks_exits_3_and_creates_nothing(
    client: str, env_dir: Path, mount: Mount, tmp_path: Path
) -> None:
    stored(mount)
    local = local_copy(tmp_path, DATA[:-1])  # one byte short: another content
    before = pool(mount)
    run = CLIENTS[client]([str(mount.path), ENV, NESTED, str(local)])
    assert run.code == 3, (run.out, run.err)
    assert "does not hold" in one_line(run.err)
    assert blake3.blake3(DATA[:-1]).hexdigest() in run.err  # the hash that would have to be uploaded
    assert os.listdir(env_dir) == ["original"]  # not even the parent directories
    assert pool(mount) == before
    assert requests_left(mount) == []


# -- --upload-if-missing ----------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["cli", "function"])
def test_upload_if_missing_copies_content_the_store_lacks(
    client: str, env_dir: Path, mount: Mount, tmp_path: Path
) -> None:
    local = local_copy(tmp_path)
    blobs = mount.blob_count()
    run = CLIENTS[client]([str(mount.path), ENV, NESTED, str(local)], upload=True)
    assert run.code == 0, run.err
    assert one_line(run.out).startswith("copied "), run.out
    assert (env_dir / NESTED).read_bytes() == DATA
    assert mount.blob_count() == blobs + 1  # uploaded this time
    assert requests_left(mount) == []


@pytest.mark.parametrize("client", ["cli", "function"])
def test_upload_if_missing_still_links_content_the_store_holds(
    client: str, env_dir: Path, mount: Mount, tmp_path: Path
) -> None:
    stored(mount)
    before = pool(mount)
    run = CLIENTS[client]([str(mount.path), ENV, "again", str(local_copy(tmp_path))], upload=True)
    assert run.code == 0, run.err
    assert one_line(run.out).startswith("linked ")
    assert (env_dir / "again").read_bytes() == DATA
    assert pool(mount) == before


# -- refusals -----------------------------------------------------------------------------------


@clients
def test_uid_that_may_not_write_the_destination_is_refused_with_4(
    client: str, mount_factory: Callable[..., Mount]
) -> None:
    shared = mount_factory("--allow-other")
    stored(shared)
    local = local_copy(shared.path.parent)
    (shared.path / ENV / "mine").mkdir()
    os.chown(shared.path / ENV / "mine", NOBODY, NOBODY)
    before = pool(shared)

    # The environment is root's, mode 0755: nobody may not create files in it.
    refused = CLIENTS[client]([str(shared.path), ENV, "stolen", str(local)], as_nobody=True)
    assert refused.code == 4, (refused.out, refused.err)
    assert "refused" in one_line(refused.err)
    assert not (shared.path / ENV / "stolen").exists()

    # The same uid, the same content, into its own directory: linked. (So the refusal was the daemon's.)
    allowed = CLIENTS[client]([str(shared.path), ENV, "mine/sub/linked", str(local)], as_nobody=True)
    assert allowed.code == 0, allowed.err
    assert (shared.path / ENV / "mine" / "sub" / "linked").read_bytes() == DATA
    assert pool(shared) == before


def test_function_claiming_content_it_does_not_hold_is_refused(
    env_dir: Path, mount: Mount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that knows the hash but holds other bytes: the answer is wrong (EACCES), exit 4."""
    stored(mount)
    local = local_copy(tmp_path, bytes(b ^ 0xFF for b in DATA))  # every byte differs
    monkeypatch.setattr(link_module, "hash_fd", lambda fd: blake3.blake3(DATA).hexdigest())
    outcome = link(mount.path, ENV, "claimed", local)
    assert (outcome.kind, outcome.exit_code) == ("refused", 4), outcome
    assert "wrong answer" in outcome.message
    assert not (env_dir / "claimed").exists()
    assert requests_left(mount) == []


def stand_in(tools: Path, name: str, script: str) -> None:
    """A stand-in for a tool, put first on PATH; it runs the real one from /usr/bin."""
    tools.mkdir(exist_ok=True)
    (tools / name).write_text(f"#!/bin/bash\n{script}\n")
    (tools / name).chmod(0o755)


def test_script_claiming_content_it_does_not_hold_is_refused(env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    stored(mount)
    local = local_copy(tmp_path, bytes(b ^ 0xFF for b in DATA))
    # b3sum of the whole file reports the store's hash; hashing the ranges (stdin) stays honest.
    claimed = blake3.blake3(DATA).hexdigest()
    lie = f'[ -f "${{@: -1}}" ] && {{ echo {claimed}; exit 0; }}\nexec /usr/bin/b3sum "$@"'
    stand_in(tmp_path / "tools", "b3sum", lie)
    run = run_script([str(mount.path), ENV, "claimed", str(local)], tools=tmp_path / "tools")
    assert run.code == 4, (run.out, run.err)
    assert "wrong answer" in one_line(run.err)
    assert not (env_dir / "claimed").exists()
    assert requests_left(mount) == []


def test_function_answer_after_expiry_is_refused(
    mount_factory: Callable[..., Mount], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = mount_factory("--request-ttl", "1")
    stored(short)
    real_answer = link_module.answer_for

    def slow_answer(fd: int, ranges: list[tuple[int, int]]) -> str:
        import time
        time.sleep(1.5)
        return real_answer(fd, ranges)

    monkeypatch.setattr(link_module, "answer_for", slow_answer)
    outcome = link(short.path, ENV, "late", local_copy(tmp_path))
    assert (outcome.kind, outcome.exit_code) == ("refused", 4), outcome
    assert "expired" in outcome.message
    assert not (short.path / ENV / "late").exists()


def test_script_answer_after_expiry_is_refused(mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    # Between the answer's expiry (ttl) and its purge (ttl later), the answer's write gets ETIMEDOUT.
    short = mount_factory("--request-ttl", "2")
    stored(short)
    stand_in(tmp_path / "tools", "b3sum", '[ -f "${@: -1}" ] || sleep 3\nexec /usr/bin/b3sum "$@"')
    run = run_script([str(short.path), ENV, "late", str(local_copy(tmp_path))], tools=tmp_path / "tools")
    assert run.code == 4, (run.out, run.err)
    assert "expired" in one_line(run.err)
    assert not (short.path / ENV / "late").exists()


# -- other errors, usage, help -------------------------------------------------------------------------


@clients
def test_not_a_mount_exits_1(client: str, tmp_path: Path) -> None:
    run = CLIENTS[client]([str(tmp_path), ENV, "x", str(local_copy(tmp_path))])
    assert run.code == 1
    assert "not a fusestore mount" in one_line(run.err)


@clients
def test_missing_local_file_exits_1(client: str, env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    run = CLIENTS[client]([str(mount.path), ENV, "x", str(tmp_path / "absent")])
    assert run.code == 1
    assert "absent" in one_line(run.err)
    assert os.listdir(env_dir) == []


@clients
def test_malformed_environment_exits_1(client: str, env_dir: Path, mount: Mount, tmp_path: Path) -> None:
    stored(mount)
    run = CLIENTS[client]([str(mount.path), ENV.upper(), "x", str(local_copy(tmp_path))])
    assert run.code == 1
    assert "rejected" in one_line(run.err)
    assert requests_left(mount) == []


@pytest.mark.parametrize("args", [[], ["mnt", ENV, "path"], ["mnt", ENV, "path", "file", "extra"]])
def test_bad_usage_exits_2(args: list[str]) -> None:
    for run in (run_cli(args), run_script(args)):
        assert run.code == 2
        assert "usage:" in run.err and run.out == ""


@pytest.mark.parametrize("client", ["cli", "script"])
def test_help_lists_the_exit_codes(client: str) -> None:
    run = (run_cli(["--help"]) if client == "cli" else run_script(["--help"]))
    assert run.code == 0
    assert "MOUNTPOINT ENV PATH LOCALFILE" in run.out
    codes = {line.split()[0] for line in run.out.splitlines() if line.startswith("  ") and line.split()[0].isdigit()}
    assert codes == {"0", "1", "2", "3", "4"}, run.out
    assert "does not hold" in run.out and "refused" in run.out
