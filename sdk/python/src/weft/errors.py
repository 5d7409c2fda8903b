"""The exceptions the weft SDK raises: one class per gRPC status family.

Every failure of a call to weft's services reaches the caller as a `WeftError` subclass
chosen by the gRPC status code, carrying the code, the server's message (written to say
what was wrong and how to fix it) and the status details, if the server sent any. Errors
found on the client side (a pipeline file that does not parse, a blob whose content does
not match its digest) use the same classes, so `except weft.errors.WeftError` is the one
thing a caller needs. This module must never import the client or the generated stubs:
it is imported by everything else.

    WeftError
     ├── Cancelled              CANCELLED
     ├── Unknown                UNKNOWN
     ├── InvalidArgument        INVALID_ARGUMENT
     │    └── PipelineFileError    (client side: a pipeline file is wrong)
     ├── NotFound               NOT_FOUND
     ├── AlreadyExists          ALREADY_EXISTS
     ├── PermissionDenied       PERMISSION_DENIED
     ├── Unauthenticated        UNAUTHENTICATED
     ├── ResourceExhausted      RESOURCE_EXHAUSTED
     ├── FailedPrecondition     FAILED_PRECONDITION
     ├── OutOfRange             OUT_OF_RANGE
     ├── Unimplemented          UNIMPLEMENTED
     ├── Internal               INTERNAL
     ├── DataLoss               DATA_LOSS
     └── TransientError            (retrying later may succeed)
          ├── Unavailable       UNAVAILABLE
          ├── DeadlineExceeded  DEADLINE_EXCEEDED
          └── Aborted           ABORTED (etag mismatch, lost race: re-read, then retry)
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PipelineFileError",
    "ResourceExhausted",
    "TransientError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "WeftError",
    "from_code",
    "from_rpc_error",
]

# The trailer in which gRPC servers send a serialized google.rpc.Status with typed details.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class WeftError(Exception):
    """Base of every error the weft SDK raises.

    Attributes:
        code: The gRPC status code of the failure.
        message: What went wrong, for people; the server's status message for RPC errors.
        details: Typed error details the server attached (`google.rpc.Status.details`),
            as `google.protobuf.Any` messages; empty when there are none.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, details: tuple[any_pb2.Any, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Cancelled(WeftError):
    """The call was cancelled, usually by the caller."""

    code = grpc.StatusCode.CANCELLED


class Unknown(WeftError):
    """The server failed without saying how."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(WeftError):
    """The request is wrong as sent; the message names the field and the fix."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PipelineFileError(InvalidArgument):
    """A pipeline file cannot be loaded; the message names the file, the place in it and the fix."""


class NotFound(WeftError):
    """The named pipeline, version, run, step or blob does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(WeftError):
    """A resource with that name exists and the request may not replace it."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(WeftError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(WeftError):
    """The caller did not prove who it is."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(WeftError):
    """A size or count limit was exceeded (message size, steps per pipeline...)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(WeftError):
    """The resource is not in a state that allows the request (e.g. resuming a running run)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(WeftError):
    """A position is past the end (a blob offset, a compacted watch revision)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(WeftError):
    """The server does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(WeftError):
    """A bug or a corrupt record on the server; the message says which."""

    code = grpc.StatusCode.INTERNAL


class DataLoss(WeftError):
    """Content was lost or corrupted (e.g. a blob whose bytes do not match its digest)."""

    code = grpc.StatusCode.DATA_LOSS


class TransientError(WeftError):
    """A failure that retrying later may cure. The SDK already retried it where that was safe."""


class Unavailable(TransientError):
    """The server (or etcd behind it) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TransientError):
    """The call did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(TransientError):
    """A concurrent change won (etag mismatch, lost transaction); re-read, then retry."""

    code = grpc.StatusCode.ABORTED


_BY_CODE: dict[grpc.StatusCode, type[WeftError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        OutOfRange,
        Unimplemented,
        Internal,
        DataLoss,
        Unavailable,
        DeadlineExceeded,
        Aborted,
    )
}


def from_code(code: grpc.StatusCode, message: str, *, details: tuple[any_pb2.Any, ...] = ()) -> WeftError:
    """The `WeftError` subclass instance for a status code.

    Args:
        code: A gRPC status code other than OK.
        message: The status message.
        details: Typed details of the status.

    Returns:
        An instance of the class of the code's family (`Unknown` for codes without one).
    """
    return _BY_CODE.get(code, Unknown)(message, details=details)


def from_rpc_error(error: grpc.RpcError) -> WeftError:
    """Translates a failed gRPC call into the matching `WeftError`.

    Works for errors of both the sync and the asyncio gRPC APIs. The status details, when
    the server attached a `google.rpc.Status` trailer, are decoded into `details`.

    Args:
        error: The exception a gRPC call raised.

    Returns:
        The `WeftError` to raise instead, with the original as its cause left to the caller
        (`raise from_rpc_error(e) from e`).
    """
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    message = (details_of() if callable(details_of) else None) or str(code.name if code else "UNKNOWN")
    return from_code(code, message, details=_status_details(error))


def _status_details(error: grpc.RpcError) -> tuple[any_pb2.Any, ...]:
    trailing_of = getattr(error, "trailing_metadata", None)
    trailing = trailing_of() if callable(trailing_of) else None
    for key, value in trailing or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return decode_status_details(value)
            except ValueError:
                # Undecodable details must not hide the error they came with.
                return ()
    return ()


def decode_status_details(status: bytes) -> tuple[any_pb2.Any, ...]:
    """The `details` of a serialized `google.rpc.Status`.

    `google.rpc.Status` is `{int32 code = 1; string message = 2; repeated Any details = 3}`.
    It is decoded by hand because its generated class lives in googleapis-common-protos,
    which the SDK does not depend on (and registering a second copy of
    `google.rpc.Status` would collide with it in the default descriptor pool).

    Args:
        status: The bytes of the `grpc-status-details-bin` trailer.

    Returns:
        The detail messages, in order.

    Raises:
        ValueError: The bytes are not a valid protobuf encoding.
    """
    details: list[any_pb2.Any] = []
    pos = 0
    while pos < len(status):
        tag, pos = _varint(status, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = _varint(status, pos)
        elif wire_type == 2:
            length, pos = _varint(status, pos)
            if pos + length > len(status):
                raise ValueError("truncated length-delimited field")
            if field == 3:
                details.append(any_pb2.Any.FromString(status[pos : pos + length]))
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != len(status):
        raise ValueError("truncated fixed-width field")
    return tuple(details)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
