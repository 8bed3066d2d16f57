"""docs/FORMAT.md is exact: every database and file kind is named, and a store reads back through it alone.

The byte layouts are taken from the document's tables (``**`db` key**`` /
``**`db` value**`` captions followed by an Offset | Size | Type | Field
table), so a store decoded here with ``lmdb``, ``struct`` and ``blake3`` is
decoded the way the document says, not the way ``fusestore.catalog`` does.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import blake3
import lmdb
import pytest
import zstandard

from fusestore import Store, linux
from fusestore.catalog import records
from fusestore.pool import codec
from fusestore.pool.chunker import DEFAULT_PARAMS
from fusestore.store import chunks

from .conftest import ENV

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "FORMAT.md"
CATALOG_SOURCE = REPO / "fusestore" / "catalog" / "catalog.py"

FIXED = {"u8": ">B", "u32": ">I", "u64": ">Q", "i64": ">q"}


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


# -- the document's tables ------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def layout(doc: str, db: str, part: str) -> list[tuple[str, str, str, str]]:
    """The rows (offset, size, type, field) of the table captioned ``**`db` part**``."""
    lines = doc.splitlines()
    caption = f"**`{db}` {part}**"
    assert caption in lines, f"FORMAT.md has no {caption} table"
    at = lines.index(caption) + 1
    while not lines[at].startswith("|"):
        at += 1
    header = _cells(lines[at])
    assert header[:4] == ["Offset", "Size", "Type", "Field"], header
    rows = []
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        offset, size, kind, field = _cells(line)[:4]
        rows.append((offset, size, kind, field))
    assert rows, f"{caption} has no rows"
    return rows


def decode(rows: list[tuple[str, str, str, str]], raw: bytes) -> dict[str, Any]:
    """Decode ``raw`` as the table says; the table's fixed offsets and sizes must add up and cover ``raw``."""
    fields: dict[str, Any] = {}
    pos = 0
    for offset, size, kind, field in rows:
        if offset.isdigit():
            assert int(offset) == pos, f"{field}: documented offset {offset}, but the fields before end at {pos}"
        if kind in FIXED:
            width = struct.calcsize(FIXED[kind])
            assert size == str(width), f"{field}: a {kind} is {width} bytes, the table says {size}"
            (fields[field],) = struct.unpack_from(FIXED[kind], raw, pos)
            pos += width
        elif kind == "bytes":
            if size == "rest":
                length = len(raw) - pos
            elif size.isdigit():
                length = int(size)
            else:
                length = fields[size]
            fields[field] = raw[pos:pos + length]
            assert len(fields[field]) == length, f"{field}: {len(raw)} bytes end before {pos}+{length}"
            pos += length
        else:
            raise AssertionError(f"{field}: unknown type {kind!r} in FORMAT.md")
    assert pos == len(raw), f"the table covers {pos} bytes of {len(raw)}"
    return fields


def key_u64(value: int) -> bytes:
    return struct.pack(">Q", value)


# -- databases -------------------------------------------------------------------------------------------


def _store_with_a_file(path: Path, data: bytes = b"hello, format\n", name: str = "dir/file.txt") -> str:
    with Store.open(path) as store:
        return store.put_for_environment(ENV, name, io.BytesIO(data), len(data))


def _named_databases(catalog: Path) -> set[str]:
    env = lmdb.open(str(catalog), readonly=True, lock=False, max_dbs=32, create=False)
    try:
        with env.begin() as txn:
            return {bytes(key).decode("ascii") for key in txn.cursor().iternext(values=False)}
    finally:
        env.close()


def test_every_database_the_catalog_opens_is_documented(tmp_path: Path, doc: str) -> None:
    in_source = set(re.findall(r'open_db\(b"([A-Za-z0-9_]+)"[,)]', CATALOG_SOURCE.read_text()))
    _store_with_a_file(tmp_path / "store")
    in_store = _named_databases(tmp_path / "store" / "catalog")
    assert in_source, "no open_db(b\"...\") call found in catalog.py"
    assert in_store == in_source, "the main database lists exactly the named databases the catalog opens"
    for name in sorted(in_store):
        heading = re.search(rf"^#+ `{name}`$", doc, re.MULTILINE)
        entry = re.search(rf"^\| `{name}` \|", doc, re.MULTILINE)
        assert heading and entry, f"database {name!r} needs a heading and a row in FORMAT.md's table"


# -- files -------------------------------------------------------------------------------------------------

HEX = "[0-9a-f]"
KINDS = [  # (pattern of a path relative to the store, the kind's name in FORMAT.md's layout table)
    (r"lock", "lock"),
    (r"fusestore\.log", "fusestore.log"),
    (r"catalog/", "catalog/"),
    (r"catalog\.new/", "catalog.new/"),
    (r"catalog/data\.mdb", "catalog/data.mdb"),
    (r"catalog/lock\.mdb", "catalog/lock.mdb"),
    (r"catalog/anchor", "catalog/anchor"),
    (r"packs/", "packs/"),
    (rf"packs/{HEX}{{16}}", "packs/<16 hex>"),
    (r"pool/", "pool/"),
    (rf"pool/{HEX}{{2}}/", "pool/ab/"),
    (rf"pool/{HEX}{{2}}/{HEX}{{2}}/", "pool/ab/cd/"),
    (rf"pool/({HEX}{{2}})/({HEX}{{2}})/\1\2{HEX}{{60}}", "pool/ab/cd/<64 hex>"),
    (r"staging/", "staging/"),
    (rf"staging/{HEX}{{32}}", "staging/<32 hex>"),
    (rf"staging/{HEX}{{32}}\.blob", "staging/<32 hex>.blob"),
    (r"lost\+found/", "lost+found/"),
    (rf"lost\+found/{HEX}{{64}}(\.[0-9]+)?", "lost+found/<64 hex>"),
]


def kind_of(relative: str) -> str | None:
    for pattern, kind in KINDS:
        if re.fullmatch(pattern, relative):
            return kind
    return None


def documented_kinds(doc: str) -> set[str]:
    """The first cells of the layout table (the one whose header starts ``| Path | Kind |``)."""
    lines = doc.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| Path | Kind |"))
    kinds = set()
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        kinds.add(_cells(line)[0].strip("`"))
    return kinds


def test_every_file_kind_under_a_store_is_documented(tmp_path: Path, doc: str) -> None:
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.put_for_environment(ENV, "a.txt", io.BytesIO(b"a file"), 6)
        store.staging.create().close()  # what a crash mid-put leaves: a staging file (recovery deletes it)
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory).relative_to(root)
        for name in subdirectories:
            found.add(f"{(here / name).as_posix()}/")
        for name in files:
            found.add((here / name).as_posix())
    kinds = {path: kind_of(path) for path in found}
    assert not [path for path, kind in kinds.items() if kind is None], f"undocumented paths: {kinds}"
    produced = set(kinds.values())
    assert {"catalog/data.mdb", "catalog/lock.mdb", "catalog/anchor", "packs/", "staging/", "lock",
            "packs/<16 hex>", "staging/<32 hex>"} <= produced
    documented = documented_kinds(doc)
    assert produced <= documented, f"missing from FORMAT.md's layout table: {produced - documented}"
    assert documented == {kind for _, kind in KINDS}, "the table names exactly the kinds this test knows"


def documented_modes(doc: str) -> dict[str, int]:
    """Kind -> the permission bits the layout table's Mode column gives it."""
    lines = doc.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| Path | Kind |"))
    assert _cells(lines[at])[2] == "Mode", "the layout table's third column is the mode"
    modes = {}
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        modes[cells[0].strip("`")] = int(cells[2].strip("`"), 8)
    return modes


def test_every_path_under_a_store_has_its_documented_mode_whatever_the_umask(tmp_path: Path, doc: str) -> None:
    root = tmp_path / "store"
    old_umask = os.umask(0)  # the most open umask: every mode is the one fusestore asked for
    try:
        with Store.open(root) as store:
            store.put_for_environment(ENV, "a.txt", io.BytesIO(b"a file"), 6)
            store.staging.create().close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    modes = documented_modes(doc)
    seen = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        kind = kind_of(relative)
        assert kind is not None, relative
        seen[relative] = (oct(stat.S_IMODE(path.stat().st_mode)), oct(modes[kind]))
    assert all(actual == documented for actual, documented in seen.values()), seen


# -- a store read through the document alone ------------------------------------------------------------------


def test_a_store_reads_back_with_raw_lmdb_following_the_document(tmp_path: Path, doc: str) -> None:
    data = b"the bytes of one file\n" * 100 + os.urandom(200_000)  # a compressed chunk, then raw ones
    root = tmp_path / "store"
    hash_hex = _store_with_a_file(root, data, "dir/file.txt")

    env = lmdb.open(str(root / "catalog"), readonly=True, lock=False, max_dbs=32, create=False)
    try:
        dbs = {name: env.open_db(name.encode(), create=False)
               for name in ("meta", "resources", "inodes", "dirents", "extents", "chunks", "packs", "packchunks")}
        with env.begin() as txn:
            assert txn.get(b"format", db=dbs["meta"]) == str(records.FORMAT_VERSION).encode()

            def inode(ino: int) -> dict[str, Any]:
                raw = txn.get(key_u64(ino), db=dbs["inodes"])
                assert raw is not None, f"no inode {ino}"
                return decode(layout(doc, "inodes", "value"), bytes(raw))

            def lookup(parent: int, name: bytes) -> int:
                raw = txn.get(key_u64(parent) + name, db=dbs["dirents"])
                assert raw is not None, f"no entry {name!r} in {parent}"
                return int(decode(layout(doc, "dirents", "value"), bytes(raw))["child"])

            root_node = inode(1)
            assert (root_node["mode"], root_node["parent"], root_node["space"], root_node["tail"]) == (
                0o041777, 1, 0, b"")
            assert stat.S_ISDIR(inode(lookup(1, b".global"))["mode"])
            assert stat.S_ISDIR(inode(lookup(1, b".users"))["mode"])

            ino = 1
            for part in (ENV.encode(), b"dir", b"file.txt"):
                ino = lookup(ino, part)
            node = inode(ino)
            assert stat.S_ISREG(node["mode"])
            digest = node["tail"]
            assert isinstance(digest, bytes) and len(digest) == 32
            assert digest.hex() == hash_hex

            raw = txn.get(digest, db=dbs["resources"])
            assert raw is not None
            resource = decode(layout(doc, "resources", "value"), bytes(raw))
            assert resource == {"length": len(data), "refcount": 1, "state": 1, "layout": 1}
            assert node["size"] == len(data)

            raw_next = txn.get(b"next_ino", db=dbs["meta"])  # meta: next_ino -> u64
            assert raw_next is not None
            next_ino = decode([("0", "8", "u64", "next_ino")], bytes(raw_next))["next_ino"]
            for raw_key, raw_value in txn.cursor(db=dbs["inodes"]):  # every inode decodes by the table
                decoded = decode(layout(doc, "inodes", "value"), bytes(raw_value))
                assert decode(layout(doc, "inodes", "key"), bytes(raw_key))["ino"] < next_ino
                assert decoded["nlink"] >= 1

            content = b""  # step 7 of "Reading a store without fusestore"
            cursor = txn.cursor(db=dbs["extents"])
            assert cursor.set_range(digest + key_u64(1))
            for raw_key, raw_value in cursor:
                key = decode(layout(doc, "extents", "key"), bytes(raw_key))
                if key["digest"] != digest:
                    break
                extent = decode(layout(doc, "extents", "value"), bytes(raw_value))
                raw_chunk = txn.get(extent["chunk"], db=dbs["chunks"])
                assert raw_chunk is not None
                chunk = decode(layout(doc, "chunks", "value"), bytes(raw_chunk))
                with open(root / "packs" / f"{chunk['pack']:016x}", "rb") as pack:
                    pack.seek(chunk["offset"])
                    stored = pack.read(chunk["stored"])
                piece = zstandard.ZstdDecompressor().decompress(stored) if chunk["codec"] == 1 else stored
                assert chunk["codec"] in (0, 1) and len(piece) == chunk["length"] == extent["length"]
                assert blake3.blake3(piece).digest() == extent["chunk"]
                content += piece * extent["count"]
                assert len(content) == key["end"]
                index = txn.get(key_u64(chunk["pack"]) + key_u64(chunk["offset"]), db=dbs["packchunks"])
                assert index == extent["chunk"]
            raw_pack = txn.get(key_u64(chunk["pack"]), db=dbs["packs"])
            assert raw_pack is not None
            assert decode(layout(doc, "packs", "value"), bytes(raw_pack))["sealed"] == 1
    finally:
        env.close()

    assert len(content) == resource["length"]
    assert blake3.blake3(content).digest() == digest
    assert content == data


# -- the tables against the encoders, and the constants the document states ----------------------------------


def test_documented_layouts_decode_what_the_encoders_write(doc: str) -> None:
    digest = blake3.blake3(b"x").digest()
    resource = records.Resource(digest, 7, 3, records.COMPLETE)
    assert decode(layout(doc, "resources", "value"), resource.encode()) == {
        "length": 7, "refcount": 3, "state": 1, "layout": 0}

    regular = records.Inode(9, stat.S_IFREG | 0o640, 1000, 100, nlink=2, size=7, atime_ns=-1, mtime_ns=2,
                            ctime_ns=3, space=4, content=digest)
    assert decode(layout(doc, "inodes", "value"), regular.encode()) == {
        "mode": stat.S_IFREG | 0o640, "uid": 1000, "gid": 100, "nlink": 2, "size": 7, "atime_ns": -1,
        "mtime_ns": 2, "ctime_ns": 3, "rdev": 0, "parent": 0, "space": 4, "tail": digest}
    pending = records.Inode(9, stat.S_IFREG | 0o640, 0, 0)
    assert decode(layout(doc, "inodes", "value"), pending.encode())["tail"] == b""
    link = records.Inode(9, stat.S_IFLNK | 0o777, 0, 0, size=3, target=b"a/b")
    assert decode(layout(doc, "inodes", "value"), link.encode())["tail"] == b"a/b"

    record = records.StagingRecord("ab" * 16, 6, reserved=True, expected=digest, parent=5, entry=b"f", keep=True)
    assert decode(layout(doc, "staging", "value"), record.encode()) == {
        "ino": 6, "flags": 3, "parent": 5, "expected_len": 32, "expected": digest, "entry": b"f"}
    bare = records.StagingRecord("ab" * 16, 6)
    assert decode(layout(doc, "staging", "value"), bare.encode()) == {
        "ino": 6, "flags": 0, "parent": 0, "expected_len": 0, "expected": b"", "entry": b""}
    edit = records.StagingRecord("ab" * 16, 6, keep=True, base=digest, base_length=1 << 33)
    assert decode(layout(doc, "staging", "value with the base flag"), edit.encode()) == {
        "ino": 6, "flags": 6, "parent": 0, "expected_len": 0, "expected": b"", "base": digest,
        "base_length": 1 << 33, "entry": b""}
    assert (records.STAGING_RESERVED, records.STAGING_KEEP, records.STAGING_BASE) == (1, 2, 4)
    assert "value 1: reserved; value 2: keep; value 4: base" in doc

    assert decode(layout(doc, "synced", "value"), records.Synced(4096, -7).encode()) == {"size": 4096, "mtime_ns": -7}
    assert decode(layout(doc, "dirents", "key"), key_u64(5) + b"name") == {"parent": 5, "name": b"name"}
    assert decode(layout(doc, "xattrs", "key"), key_u64(5) + b"user.a") == {"ino": 5, "name": b"user.a"}
    assert decode(layout(doc, "unsynced", "value"), key_u64(2)) == {"checkpoint": 2}
    assert decode(layout(doc, "resources", "key"), digest) == {"digest": digest}
    for db in ("unsynced", "freed"):
        assert decode(layout(doc, db, "key"), digest) == {"key": digest}
        assert decode(layout(doc, db, "key"), key_u64(7)) == {"key": key_u64(7)}
    chunked = records.Resource(digest, 7, 3, records.COMPLETE, records.LAYOUT_CHUNKS)
    assert decode(layout(doc, "resources", "value"), chunked.encode())["layout"] == 1
    chunk = records.Chunk(digest, 5, 4096, 100, 200, 1, 9)
    assert decode(layout(doc, "chunks", "value"), chunk.encode()) == {
        "pack": 5, "offset": 4096, "stored": 100, "length": 200, "codec": 1, "refcount": 9}
    extent = records.Extent(1 << 40, digest, 65536, 3)
    assert decode(layout(doc, "extents", "value"), extent.encode()) == {"chunk": digest, "length": 65536, "count": 3}
    assert decode(layout(doc, "extents", "key"), digest + key_u64(1 << 40)) == {"digest": digest, "end": 1 << 40}
    assert decode(layout(doc, "packs", "value"), records.Pack(5, 100, 60, True).encode()) == {
        "size": 100, "live": 60, "sealed": 1}
    assert decode(layout(doc, "packs", "key"), key_u64(5)) == {"pack": 5}
    assert decode(layout(doc, "packchunks", "key"), key_u64(5) + key_u64(9)) == {"pack": 5, "offset": 9}
    assert decode(layout(doc, "packchunks", "value"), digest) == {"chunk": digest}
    assert records.Chunking(2048, 16384, 65536).encode() == bytes.fromhex("000008000000400000010000")
    assert "`00000800 00004000 00010000`" in doc
    assert decode(layout(doc, "orphans", "key"), key_u64(8)) == {"ino": 8}


def test_the_document_states_the_current_version_and_constants(doc: str) -> None:
    assert f"format version **{records.FORMAT_VERSION}**" in doc
    assert f"#### Version {records.FORMAT_VERSION}" in doc
    assert (records.PENDING, records.COMPLETE, records.LAYOUT_WHOLE_BLOB, records.ROOT_INO) == (0, 1, 0, 1)
    assert records.LAYOUT_CHUNKS == 1
    params = DEFAULT_PARAMS
    sizes = f"min {params.min_size >> 10} KiB,\naverage {params.avg_size >> 10} KiB, max {params.max_size >> 10} KiB"
    assert sizes in doc
    assert (codec.RAW, codec.ZSTD, codec.SAVING, codec.MIN_COMPRESSED) == (0, 1, 32, 128)
    assert f"{chunks.PACK_TARGET >> 20} MiB (`PACK_TARGET`" in doc
    assert blake3.blake3(b"").hexdigest() in doc  # the empty content, which has no blob


def test_the_anchor_reads_back_following_the_document(tmp_path: Path, doc: str) -> None:
    root = tmp_path / "store"
    _store_with_a_file(root)  # closed: the last anchor is a close's
    raw = (root / "catalog" / "anchor").read_bytes()
    rows = layout(doc, "anchor", "slot")
    head = [row for row in rows if row[0].isdigit() and row[1].isdigit()]
    assert [field for _, _, _, field in head] == ["magic", "version", "sequence", "boot", "closed", "txnid",
                                                  "page_size"]
    assert "offsets 0 and 262,144" in doc
    slots = []
    for offset in (0, 262_144):
        fields = decode(head, raw[offset:offset + sum(int(size) for _, size, _, _ in head)])
        if fields["magic"] != b"FSANCHOR":
            continue
        page = fields["page_size"]
        end = offset + 49 + 2 * page
        assert (rows[-2][3], rows[-1][3]) == ("metas", "checksum")
        (checksum,) = struct.unpack_from(">I", raw, end)
        assert checksum == zlib.crc32(raw[offset:end])
        slots.append((fields, raw[offset + 49:end]))
    fields, metas = max(slots, key=lambda slot: slot[0]["sequence"])
    assert (fields["version"], fields["closed"], fields["boot"]) == (1, 1, linux.boot_id())
    page = fields["page_size"]
    assert metas == (root / "catalog" / "data.mdb").read_bytes()[:2 * page]
    txnids = [struct.unpack_from("=Q", metas, at + 144)[0] for at in (0, page)]  # "offset 144, machine's order"
    assert fields["txnid"] == max(txnids)
