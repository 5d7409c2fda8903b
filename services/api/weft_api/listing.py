"""Request fields every weft-api method shares: page sizes, page tokens and request ids.

Page tokens are opaque to clients (base64 of a position the service understands) and
are checked to belong to the listing they are passed to, so a token of another
namespace or collection is rejected instead of silently listing the wrong thing.
Nothing here touches etcd.
"""

from __future__ import annotations

import base64
import binascii
import re

from weft_core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_REQUEST_ID = 128

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]+$")


def page_size(value: int, field: str = "page_size") -> int:
    """The effective page size: 0 means 100, at most 1000."""
    if value < 0:
        raise InvalidArgument(
            f"{field}: {value} is negative; use 0 for the default of {DEFAULT_PAGE_SIZE}", field=field
        )
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: bytes) -> str:
    """An opaque page token for `position`."""
    return base64.urlsafe_b64encode(position).decode()


def decode_token(token: str, must_start_with: bytes, field: str = "page_token") -> bytes | None:
    """The position of a page token (None for the first page).

    Raises:
        InvalidArgument: The token is malformed or belongs to another listing.
    """
    if not token:
        return None
    try:
        position = base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        position = b""
    if not position.startswith(must_start_with):
        raise InvalidArgument(
            f"{field}: not a token of this listing; pass the next_page_token of the previous page "
            "of the same request, or leave it empty to start over",
            field=field,
        )
    return position


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """Validates a client request id ("" means none)."""
    if request_id and (len(request_id) > MAX_REQUEST_ID or not _REQUEST_ID.match(request_id)):
        raise InvalidArgument(
            f"{field}: use at most {MAX_REQUEST_ID} letters, digits, '.', '_', ':' and '-' "
            "(a UUID is a good request id)",
            field=field,
        )
    return request_id
