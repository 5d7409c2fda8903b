"""Domain errors raised by weft's services, and their gRPC status codes.

Service code raises these; one interceptor (`weft_core.server`) turns them into a gRPC
status with the message unchanged, so every message must say what was wrong and how to
fix it. Nothing here may depend on etcd or the runtime.

    ServiceError
     ├── InvalidArgument     INVALID_ARGUMENT
     ├── NotFound            NOT_FOUND
     ├── AlreadyExists       ALREADY_EXISTS
     ├── FailedPrecondition  FAILED_PRECONDITION
     ├── Aborted             ABORTED (etag mismatch, lost race)
     ├── ResourceExhausted   RESOURCE_EXHAUSTED
     ├── Unavailable         UNAVAILABLE (etcd down, artifact store unreachable)
     ├── Internal            INTERNAL
     ├── Unauthenticated     UNAUTHENTICATED (no or unknown credentials)
     └── PermissionDenied    PERMISSION_DENIED (known caller, missing role)
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A failure to report to the caller with a gRPC status code and a readable message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed; the message names the field and the fix."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A resource with that name exists and the request may not replace it."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The resource is not in a state that allows the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrent change won (etag mismatch, lost transaction); retry after re-reading."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    """A size or count limit was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """A dependency (etcd, the artifact store, an executor) cannot be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(ServiceError):
    """A bug or a corrupt record; the message says which record."""

    code = grpc.StatusCode.INTERNAL


class Unauthenticated(ServiceError):
    """The call carries no credentials, or credentials nobody issued (weft_core.auth)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known but lacks the role the call needs; the message names the role."""

    code = grpc.StatusCode.PERMISSION_DENIED
