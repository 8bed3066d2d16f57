"""scripts/series.py's pure helpers: the series' edits, the keep-raw rule, the chunker specs, the store's measure."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "series.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("series_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


series = load_script()

LINES = [b"import os\n", b"    return value + 1\n", b"# a comment, longer than the others are\n"]


def test_an_edit_changes_the_length_near_the_middle_and_keeps_both_ends() -> None:
    data = bytes(range(256)) * 40
    for seed in range(50):
        edited = series.edit_in_the_middle(data, random.Random(seed), LINES)
        assert len(edited) != len(data)
        assert edited[: len(data) * 2 // 5] == data[: len(data) * 2 // 5]
        assert edited[-(len(data) * 2 // 5 - 64):] == data[-(len(data) * 2 // 5 - 64):]


def test_an_edit_is_the_same_for_the_same_seed() -> None:
    data = b"x" * 1000
    assert series.edit_in_the_middle(data, random.Random(7), LINES) == \
        series.edit_in_the_middle(data, random.Random(7), LINES)


def test_a_new_file_has_the_size_asked_for_and_is_made_of_source_lines() -> None:
    made = series.source_like(1000, random.Random(1), LINES)
    assert len(made) == 1000
    assert made.startswith(tuple(LINES))


@pytest.mark.parametrize(("raw", "compressed", "stored"), [
    (3200, 3100, 3100),   # saves exactly 1/32: kept compressed
    (3200, 3101, 3200),   # saves less: raw
    (3200, 4000, 3200),   # grows: raw
    (3200, 10, 10),
])
def test_a_chunk_is_kept_compressed_only_when_that_saves_a_32nd(raw: int, compressed: int, stored: int) -> None:
    assert series.stored_size(raw, compressed) == stored


def test_chunker_specs_default_to_pyfastcdc_bounds() -> None:
    assert series.Chunker.parse("16") == series.Chunker(4 << 10, 16 << 10, 64 << 10)
    assert series.Chunker.parse("2:16:64") == series.Chunker(2 << 10, 16 << 10, 64 << 10)
    assert series.Chunker.parse("16").label == "4/16/64 KiB"


def test_mount_options_are_what_follows_the_double_dash() -> None:
    assert series.split_mount_options(["mount", "--json", "--", "--compression", "none"]) == \
        (["mount", "--json"], ["--compression", "none"])
    assert series.split_mount_options(["study"]) == (["study"], [])


def test_the_measure_puts_the_catalog_apart_and_leaves_out_log_and_lock(tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "data.mdb").write_bytes(b"c" * 100)
    (tmp_path / "pool" / "ab").mkdir(parents=True)
    (tmp_path / "pool" / "ab" / "blob").write_bytes(b"b" * 10)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "partial").write_bytes(b"s" * 5)
    (tmp_path / "fusestore.log").write_bytes(b"l" * 1000)
    (tmp_path / "lock").write_bytes(b"")
    os.symlink("pool", tmp_path / "link")
    usage = series.store_usage(tmp_path)
    assert (usage.files, usage.size, usage.catalog_size) == (2, 15, 100)
    assert usage.not_measured == {"fusestore.log": 1000, "lock": 0}


def test_the_tar_holds_the_tree_sorted_with_owners_normalised(tmp_path: Path) -> None:
    tree = tmp_path / "s2"
    (tree / "b").mkdir(parents=True)
    (tree / "b" / "z").write_bytes(b"z")
    (tree / "a").write_bytes(b"a")
    os.symlink("a", tree / "c")
    series.write_tar(tree, tmp_path / "t.tar")
    with tarfile.open(tmp_path / "t.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["s2", "s2/a", "s2/c", "s2/b", "s2/b/z"]
    assert {(m.uid, m.uname) for m in members} == {(0, "root")}
    assert members[2].issym() and members[2].linkname == "a"


def test_the_pick_meets_both_targets_and_takes_the_wider_margin_when_cpu_is_a_tie() -> None:
    small, medium, large = (series.Chunker.parse(s) for s in ("8", "16", "64"))
    dedups = [series.Dedup(small, 1000, 0, 0, 400, [series.Compression(1, 140, 1.0)]),    # 2.5x, 7.1x
              series.Dedup(medium, 1000, 0, 0, 450, [series.Compression(1, 153, 1.0)]),   # 2.2x, 6.5x
              series.Dedup(large, 1000, 0, 0, 500, [series.Compression(1, 140, 1.0)])]    # 2.0x: fails
    rates = {small: 0.98e9, medium: 1.0e9, large: 4e9}
    paths = [series.WritePath(c, 0, rate, rate, {1: rate}) for c, rate in rates.items()]
    pick, meeting = series.recommend(dedups, paths)
    assert [c.chunker for c in meeting] == [medium, small]   # cheapest first; large misses 2.2x
    assert pick is not None and pick.chunker == small        # within 5% of medium's CPU, with the wider margin
    rates[small] = 0.9e9
    paths = [series.WritePath(c, 0, rate, rate, {1: rate}) for c, rate in rates.items()]
    pick, _ = series.recommend(dedups, paths)
    assert pick is not None and pick.chunker == medium       # 10% dearer is no tie: the cheapest wins
