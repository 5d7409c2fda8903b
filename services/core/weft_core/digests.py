"""Content digests of files, as weft names blobs (`sha256:<hex>`).

Apart from `weft_core.blobs` so that the pod helper (`weft_executor.podio`), which must
stay small, hashes its outputs with the same code as the blob stores without importing
them (gRPC, the store clients).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Bytes read at a time: large enough for few calls, small enough to keep memory flat.
READ_BYTES = 1024 * 1024


def file_digest(path: Path) -> tuple[str, int]:
    """The `sha256:<hex>` digest of a file's content, and its size in bytes."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(READ_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size
