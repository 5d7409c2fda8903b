"""gRPC failures become one WeftError subclass per status family, keeping code, message and details."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory

from weft import errors

FAMILIES = {
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNKNOWN: errors.Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.INTERNAL: errors.Internal,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}


def _rpc_error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes | str], ...] = ()
) -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details, None)


@pytest.mark.parametrize(("code", "family"), list(FAMILIES.items()), ids=lambda v: getattr(v, "name", ""))
def test_every_status_code_maps_to_its_family(code: grpc.StatusCode, family: type[errors.WeftError]) -> None:
    error = errors.from_rpc_error(_rpc_error(code, "pipeline etl: no version abc"))
    assert type(error) is family
    assert error.code == code
    assert error.message == "pipeline etl: no version abc"
    assert str(error) == "pipeline etl: no version abc"
    assert error.details == ()


def test_every_status_code_but_ok_has_a_family() -> None:
    assert set(FAMILIES) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_transient_errors_share_a_base() -> None:
    for transient in (errors.Unavailable, errors.DeadlineExceeded, errors.Aborted):
        assert issubclass(transient, errors.TransientError)
    for permanent in (errors.NotFound, errors.InvalidArgument, errors.Internal):
        assert not issubclass(permanent, errors.TransientError)
    assert issubclass(errors.PipelineFileError, errors.InvalidArgument)


def _status_class() -> type:
    # google.rpc.Status built in a private pool, independent of the SDK's hand decoder.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(any_pb2.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto", package="google.rpc", dependency=["google/protobuf/any.proto"], syntax="proto3"
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32, label=1)
    status.field.add(name="message", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    status.field.add(
        name="details",
        number=3,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".google.protobuf.Any",
        label=3,
    )
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def test_status_details_are_decoded_from_the_trailer() -> None:
    detail = any_pb2.Any()
    detail.Pack(duration_pb2.Duration(seconds=3))
    as_dict = {"type_url": detail.type_url, "value": detail.value}
    status = _status_class()(code=5, message="no such run", details=[as_dict, as_dict])
    error = errors.from_rpc_error(
        _rpc_error(
            grpc.StatusCode.NOT_FOUND,
            "no such run",
            (("grpc-status-details-bin", status.SerializeToString()), ("other", "x")),
        )
    )
    assert isinstance(error, errors.NotFound)
    assert len(error.details) == 2
    unpacked = duration_pb2.Duration()
    assert error.details[0].Unpack(unpacked)
    assert unpacked.seconds == 3


def test_undecodable_details_keep_the_error() -> None:
    error = errors.from_rpc_error(
        _rpc_error(grpc.StatusCode.INTERNAL, "boom", (("grpc-status-details-bin", b"\x1a\x05ab"),))
    )
    assert isinstance(error, errors.Internal)
    assert error.message == "boom"
    assert error.details == ()


def test_decoder_rejects_truncated_input() -> None:
    with pytest.raises(ValueError):
        errors.decode_status_details(b"\x08")
    with pytest.raises(ValueError):
        errors.decode_status_details(b"\x1a\x09abc")


def test_empty_details_message_falls_back_to_the_code_name() -> None:
    error = errors.from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, ""))
    assert isinstance(error, errors.Unavailable)
    assert error.message == "UNAVAILABLE"
