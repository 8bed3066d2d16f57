"""Property: after every step of any put/remove/overwrite sequence, refcounts, chunks and packs agree.

After each operation every fsck check holds (``fsck.find_problems``): each
resource's refcount equals the number of inodes that reference it, each
chunk's the uses its extents count, each pack's live bytes its chunks'; the
catalog holds the chunks of exactly the contents in use, and every path
reads back what a plain dictionary model says it should. The contents share
chunks (one is another plus a tail) and repeat one (zeros), so releasing
one must leave the chunks the others still use.
"""

from __future__ import annotations

import io
import tempfile

import blake3
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fusestore import Store, errors
from fusestore.store.fsck import find_problems

from .helpers import ENV, ENV2, stored_contents

PATHS = st.sampled_from(["a", "b", "d/c", "d/e/f", "g"])
ENVS = st.sampled_from([ENV, ENV2])
BLOCK = blake3.blake3(b"block").digest(length=96 << 10)  # several chunks
CONTENTS = st.sampled_from([b"", b"one", b"two" * 1000, b"three" * 3000, b"one", BLOCK, BLOCK + b"and a tail",
                            bytes(200 << 10)])


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = Store.open(self.tmp.name)
        self.model: dict[tuple[str, str], bytes] = {}
        self.dirs: set[tuple[str, str]] = set()  # directories outlive the files that made them

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    @rule(env=ENVS, path=PATHS, data=CONTENTS)
    def put(self, env: str, path: str, data: bytes) -> None:
        def call() -> str:
            return self.store.put_for_environment(env, path, io.BytesIO(data), len(data))

        self._expect_put(env, path, call, data)

    @rule(env=ENVS, path=PATHS, data=CONTENTS, right=st.booleans())
    def checked_put(self, env: str, path: str, data: bytes, right: bool) -> None:
        h = blake3.blake3(data if right else data + b"x").hexdigest()

        def call() -> str:
            return self.store.put_for_environment_and_check_hash(env, path, io.BytesIO(data), len(data), h)

        if right:
            self._expect_put(env, path, call, data)
        else:
            with pytest.raises((errors.HashMismatch, errors.IsADirectory, errors.NotADirectory)):
                call()

    @rule(env=ENVS, path=PATHS)
    def remove(self, env: str, path: str) -> None:
        if (env, path) in self.model:
            self.store.remove_for_environment(env, path)
            del self.model[(env, path)]
        else:
            with pytest.raises((errors.NotFound, errors.IsADirectory, errors.NotADirectory)):
                self.store.remove_for_environment(env, path)

    @rule(env=ENVS, src=PATHS, dst=PATHS)
    def link_by_proof(self, env: str, src: str, dst: str) -> None:
        if (env, src) not in self.model or self._blocked(env, dst):
            return
        data = self.model[(env, src)]
        response = self.store.put_for_environment_request(env, dst, blake3.blake3(data).hexdigest())
        hasher = blake3.blake3()
        for offset, size in response.ranges:
            hasher.update(data[offset:offset + size])
        self.store.proof_of_access_response(response.request_id, hasher.hexdigest())
        self._record(env, dst, data)

    def _blocked(self, env: str, path: str) -> bool:
        """Whether a file at ``path`` collides with a directory, or would need one where a file is."""
        parts = path.split("/")
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
        return (env, path) in self.dirs or any((env, p) in self.model for p in prefixes)

    def _expect_put(self, env: str, path: str, call, data: bytes) -> None:
        if self._blocked(env, path):
            with pytest.raises((errors.IsADirectory, errors.NotADirectory)):
                call()
            return
        call()
        self._record(env, path, data)

    def _record(self, env: str, path: str, data: bytes) -> None:
        self.model[(env, path)] = data
        parts = path.split("/")
        self.dirs.update((env, "/".join(parts[:i])) for i in range(1, len(parts)))

    @invariant()
    def refcounts_and_pool_agree(self) -> None:
        assert find_problems(self.store) == []
        for (env, path), data in self.model.items():
            reader, length = self.store.get_for_environment(env, path)
            with reader:
                assert reader.read() == data and length == len(data)
        distinct = {blake3.blake3(d).digest() for d in self.model.values()}
        assert {r.digest for r in self.store.resources()} == distinct
        assert stored_contents(self.store) == sorted(blake3.blake3(d).digest() for d in set(self.model.values()) if d)
        with self.store.catalog.read() as tx:
            used = {extent.chunk for _, extent in tx.all_extents()}
            assert {chunk.digest for chunk in tx.chunks()} == used


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
