"""The catalog layer: every piece of metadata in one LMDB environment (see ``catalog.catalog``)."""

from .anchor import rollback_due
from .catalog import Catalog, verify_structure
from .records import (
                      COMPLETE,
                      FORMAT_VERSION,
                      LAYOUT_CHUNKS,
                      LAYOUT_WHOLE_BLOB,
                      LOST,
                      PENDING,
                      ROOT_INO,
                      U64,
                      Chunk,
                      Chunking,
                      Extent,
                      Inode,
                      Pack,
                      Resource,
                      StagingRecord,
                      Synced,
                      u64,
)
from .txn import Txn, unknown_resource

__all__ = ["COMPLETE", "FORMAT_VERSION", "LAYOUT_CHUNKS", "LAYOUT_WHOLE_BLOB", "LOST", "PENDING", "ROOT_INO",
           "Catalog", "Chunk", "Chunking", "Extent", "Inode", "Pack", "Resource", "StagingRecord", "Synced", "U64",
           "u64", "Txn", "rollback_due", "unknown_resource", "verify_structure"]
