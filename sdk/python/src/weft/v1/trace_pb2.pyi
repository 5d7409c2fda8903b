import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRunTraceRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class RunTrace(_message.Message):
    __slots__ = ("run", "trace_id", "spans", "root_span_ids")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    ROOT_SPAN_IDS_FIELD_NUMBER: _ClassVar[int]
    run: str
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    root_span_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run: _Optional[str] = ..., trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., root_span_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("trace_id", "span_id", "parent_span_id", "name", "service", "kind", "start_time", "end_time", "attributes", "events", "status_code", "status_message", "depth", "placeholder")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Span.Kind]
        KIND_INTERNAL: _ClassVar[Span.Kind]
        KIND_SERVER: _ClassVar[Span.Kind]
        KIND_CLIENT: _ClassVar[Span.Kind]
        KIND_PRODUCER: _ClassVar[Span.Kind]
        KIND_CONSUMER: _ClassVar[Span.Kind]
    KIND_UNSPECIFIED: Span.Kind
    KIND_INTERNAL: Span.Kind
    KIND_SERVER: Span.Kind
    KIND_CLIENT: Span.Kind
    KIND_PRODUCER: Span.Kind
    KIND_CONSUMER: Span.Kind
    class StatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_CODE_UNSPECIFIED: _ClassVar[Span.StatusCode]
        STATUS_CODE_OK: _ClassVar[Span.StatusCode]
        STATUS_CODE_ERROR: _ClassVar[Span.StatusCode]
    STATUS_CODE_UNSPECIFIED: Span.StatusCode
    STATUS_CODE_OK: Span.StatusCode
    STATUS_CODE_ERROR: Span.StatusCode
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: Span.Kind
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    events: _containers.RepeatedCompositeFieldContainer[SpanEvent]
    status_code: Span.StatusCode
    status_message: str
    depth: int
    placeholder: bool
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., name: _Optional[str] = ..., service: _Optional[str] = ..., kind: _Optional[_Union[Span.Kind, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., events: _Optional[_Iterable[_Union[SpanEvent, _Mapping]]] = ..., status_code: _Optional[_Union[Span.StatusCode, str]] = ..., status_message: _Optional[str] = ..., depth: _Optional[int] = ..., placeholder: _Optional[bool] = ...) -> None: ...

class SpanEvent(_message.Message):
    __slots__ = ("name", "time", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    time: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListRunEventsRequest(_message.Message):
    __slots__ = ("run", "page_size", "page_token", "filter")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    run: str
    page_size: int
    page_token: str
    filter: str
    def __init__(self, run: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListRunEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "history_compacted")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HISTORY_COMPACTED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TimelineEvent]
    next_page_token: str
    history_compacted: bool
    def __init__(self, events: _Optional[_Iterable[_Union[TimelineEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., history_compacted: _Optional[bool] = ...) -> None: ...

class ReplayRunEventsRequest(_message.Message):
    __slots__ = ("run", "speed", "as_fast_as_possible", "filter")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    AS_FAST_AS_POSSIBLE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    run: str
    speed: float
    as_fast_as_possible: bool
    filter: str
    def __init__(self, run: _Optional[str] = ..., speed: _Optional[float] = ..., as_fast_as_possible: _Optional[bool] = ..., filter: _Optional[str] = ...) -> None: ...

class TimelineEvent(_message.Message):
    __slots__ = ("sequence", "time", "kind", "step", "attempt", "executor", "where", "message", "source", "span_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TimelineEvent.Kind]
        KIND_SUBMITTED: _ClassVar[TimelineEvent.Kind]
        KIND_RUN_STARTED: _ClassVar[TimelineEvent.Kind]
        KIND_READY: _ClassVar[TimelineEvent.Kind]
        KIND_CLAIMED: _ClassVar[TimelineEvent.Kind]
        KIND_CACHE_HIT: _ClassVar[TimelineEvent.Kind]
        KIND_CACHE_MISS: _ClassVar[TimelineEvent.Kind]
        KIND_LAUNCHED: _ClassVar[TimelineEvent.Kind]
        KIND_OUTPUTS_UPLOADED: _ClassVar[TimelineEvent.Kind]
        KIND_COMMITTED: _ClassVar[TimelineEvent.Kind]
        KIND_RETRIED: _ClassVar[TimelineEvent.Kind]
        KIND_ATTEMPT_FAILED: _ClassVar[TimelineEvent.Kind]
        KIND_LOST: _ClassVar[TimelineEvent.Kind]
        KIND_CANCELLED: _ClassVar[TimelineEvent.Kind]
        KIND_FAILED: _ClassVar[TimelineEvent.Kind]
        KIND_SKIPPED: _ClassVar[TimelineEvent.Kind]
        KIND_LOSER: _ClassVar[TimelineEvent.Kind]
        KIND_RUN_FINISHED: _ClassVar[TimelineEvent.Kind]
        KIND_SPAN: _ClassVar[TimelineEvent.Kind]
    KIND_UNSPECIFIED: TimelineEvent.Kind
    KIND_SUBMITTED: TimelineEvent.Kind
    KIND_RUN_STARTED: TimelineEvent.Kind
    KIND_READY: TimelineEvent.Kind
    KIND_CLAIMED: TimelineEvent.Kind
    KIND_CACHE_HIT: TimelineEvent.Kind
    KIND_CACHE_MISS: TimelineEvent.Kind
    KIND_LAUNCHED: TimelineEvent.Kind
    KIND_OUTPUTS_UPLOADED: TimelineEvent.Kind
    KIND_COMMITTED: TimelineEvent.Kind
    KIND_RETRIED: TimelineEvent.Kind
    KIND_ATTEMPT_FAILED: TimelineEvent.Kind
    KIND_LOST: TimelineEvent.Kind
    KIND_CANCELLED: TimelineEvent.Kind
    KIND_FAILED: TimelineEvent.Kind
    KIND_SKIPPED: TimelineEvent.Kind
    KIND_LOSER: TimelineEvent.Kind
    KIND_RUN_FINISHED: TimelineEvent.Kind
    KIND_SPAN: TimelineEvent.Kind
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SOURCE_UNSPECIFIED: _ClassVar[TimelineEvent.Source]
        SOURCE_ETCD: _ClassVar[TimelineEvent.Source]
        SOURCE_SPAN: _ClassVar[TimelineEvent.Source]
        SOURCE_BOTH: _ClassVar[TimelineEvent.Source]
    SOURCE_UNSPECIFIED: TimelineEvent.Source
    SOURCE_ETCD: TimelineEvent.Source
    SOURCE_SPAN: TimelineEvent.Source
    SOURCE_BOTH: TimelineEvent.Source
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    kind: TimelineEvent.Kind
    step: str
    attempt: int
    executor: str
    where: str
    message: str
    source: TimelineEvent.Source
    span_id: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[TimelineEvent.Kind, str]] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., executor: _Optional[str] = ..., where: _Optional[str] = ..., message: _Optional[str] = ..., source: _Optional[_Union[TimelineEvent.Source, str]] = ..., span_id: _Optional[str] = ...) -> None: ...

class GetTracerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TracerStatus(_message.Message):
    __slots__ = ("received", "stored", "duplicates", "dropped", "queued", "forwarded", "forward_dropped", "forward_queued", "forward_endpoint", "pruned", "stored_spans", "store_bytes", "refused")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_QUEUED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    STORED_SPANS_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    received: int
    stored: int
    duplicates: int
    dropped: int
    queued: int
    forwarded: int
    forward_dropped: int
    forward_queued: int
    forward_endpoint: str
    pruned: int
    stored_spans: int
    store_bytes: int
    refused: int
    def __init__(self, received: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., dropped: _Optional[int] = ..., queued: _Optional[int] = ..., forwarded: _Optional[int] = ..., forward_dropped: _Optional[int] = ..., forward_queued: _Optional[int] = ..., forward_endpoint: _Optional[str] = ..., pruned: _Optional[int] = ..., stored_spans: _Optional[int] = ..., store_bytes: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...
