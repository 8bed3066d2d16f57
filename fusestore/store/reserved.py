"""The ``user.fusestore.*`` extended attributes: names the store reserves for itself.

None is listed by listxattr (so ``cp -a`` and ``rsync -X`` do not copy
them), and a name under the prefix that is not one of these is EPERM to set.
"""

RESERVED_PREFIX = b"user.fusestore."
HASH_XATTR = RESERVED_PREFIX + b"blake3"  # read-only: the committed content's BLAKE3 (hex)
EXPECT_XATTR = RESERVED_PREFIX + b"expect"  # the hash the next commit must have (hex to users; kept as 32 bytes)
PID_XATTR = RESERVED_PREFIX + b"pid"  # on the root of a mount: the daemon's pid (the filesystem answers it)
