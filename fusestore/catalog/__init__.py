"""The catalog layer: every piece of metadata in one LMDB environment (see ``catalog.catalog``)."""

from .anchor import rollback_due
from .catalog import Catalog, verify_structure
from .records import COMPLETE, FORMAT_VERSION, LOST, PENDING, ROOT_INO, Inode, Resource, StagingRecord, Synced
from .txn import Txn, unknown_resource

__all__ = ["COMPLETE", "FORMAT_VERSION", "LOST", "PENDING", "ROOT_INO", "Catalog", "Inode", "Resource",
           "StagingRecord", "Synced", "Txn", "rollback_due", "unknown_resource", "verify_structure"]
