"""The layers import downward only, and the light entry points stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .layers import violations

PACKAGE = Path(__file__).resolve().parent.parent / "fusestore"
HEAVY = ("lmdb", "pyfuse3", "trio")


def test_every_import_follows_the_layers() -> None:
    assert violations(PACKAGE) == []


def test_the_checker_catches_an_upward_import_and_a_forbidden_library(tmp_path: Path) -> None:
    """A deliberately wrong tree: the rules must name each broken import."""
    package = tmp_path / "fusestore"
    (package / "pool").mkdir(parents=True)
    (package / "client").mkdir()
    (package / "store").mkdir()
    (package / "pool" / "__init__.py").write_text("from ..catalog import Catalog\n")
    (package / "client" / "wire.py").write_text("import lmdb\n")
    (package / "store" / "tree.py").write_text("def later():\n    from ..fs import operations\n    import trio\n")
    (package / "errors.py").write_text("from .store import tree\n")
    found = violations(package)
    assert len(found) == 5, found
    assert any("pool layer imports fusestore.catalog" in line for line in found)
    assert any("client layer imports lmdb" in line for line in found)
    assert any("store layer imports fusestore.fs" in line for line in found)
    assert any("store layer imports trio" in line for line in found)
    assert any("base layer imports fusestore.store" in line for line in found)


def loaded_after(code: str) -> list[str]:
    """Which of lmdb, pyfuse3 and trio a fresh interpreter has loaded after running ``code``."""
    script = (f"import sys\n{code}\n"
              f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_client_loads_neither_lmdb_nor_pyfuse3_nor_trio() -> None:
    assert loaded_after("import fusestore.client.link, fusestore.client.wire") == []


def test_fusestore_link_help_loads_neither_lmdb_nor_pyfuse3_nor_trio() -> None:
    code = ("import contextlib, io, fusestore.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        fusestore.cli.main(['link', '--help'])\n    except SystemExit:\n        pass")
    assert loaded_after(code) == []


def test_the_store_library_loads_neither_pyfuse3_nor_trio() -> None:
    assert loaded_after("from fusestore import Store") == ["lmdb"]
