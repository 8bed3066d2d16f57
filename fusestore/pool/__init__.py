"""The pool layer: bytes and digests, and nothing about what they mean (see ``pool.local``)."""

from .local import LocalPool, ShortRead, Staged

__all__ = ["LocalPool", "ShortRead", "Staged"]
