"""The catalog layer: every piece of metadata in one LMDB environment (see ``catalog.catalog``)."""

from .catalog import Catalog, Txn, unknown_resource, verify_structure
from .records import COMPLETE, FORMAT_VERSION, LOST, PENDING, ROOT_INO, Inode, Resource, StagingRecord

__all__ = ["COMPLETE", "FORMAT_VERSION", "LOST", "PENDING", "ROOT_INO", "Catalog", "Inode", "Resource",
           "StagingRecord", "Txn", "unknown_resource", "verify_structure"]
