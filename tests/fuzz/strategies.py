"""Hypothesis strategies for any weft.v1 request, built from the message descriptors.

Every field gets values a hostile or careless client could send: well-formed resource
names and digests (so calls reach deep validation and real resources), empty strings,
unicode with NUL and control characters, strings far over any limit, boundary integers,
unknown enum values, repeated fields and maps from empty to thousands of entries, and
nested messages a few levels deep. `raw_request` adds bytes that are not a valid
encoding of the request at all (wrong wire types, truncated varints).

Nothing here talks to a server; `tests/fuzz/test_fuzz_api.py` drives them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

#: Namespace and resources the fuzz fixture creates, so well-formed names hit real records.
NAMESPACE = "fuzz"
PIPELINE = f"namespaces/{NAMESPACE}/pipelines/seeded"
RUN_ID = "seeded-run"
RUN = f"namespaces/{NAMESPACE}/runs/{RUN_ID}"
BLOB = b"fuzz seed blob"

_MAX_DEPTH = 3

_WELL_FORMED = [
    "",
    NAMESPACE,
    "default",
    f"namespaces/{NAMESPACE}",
    "namespaces/default",
    PIPELINE,
    "seeded",
    RUN,
    RUN_ID,
    "namespaces/other/runs/r",
    "s0",
    "out",
    "sha256:" + "0" * 64,
    "sha256:a1b2",
    "namespaces/-",
    "namespaces//runs/",
    "../../etc/passwd",
    "state=RUNNING pipeline=seeded",
    "label.a=b name=x*",
]

_NASTY = [
    "\x00",
    "a\x00b",
    "\u202e\u0000\ufffd",
    "\ud7ff\U0010ffff",
    "namespaces/\x00/runs/r",
    "%s%n%x",
    "' OR 1=1 --",
    "\n\r\t",
    " ",
    "名前",
    "A" * 64,
    "a" * 64,
]


def _huge_text() -> st.SearchStrategy[str]:
    return st.sampled_from([70, 254, 1025, 65_537, 300_000]).map(lambda n: "x" * n)


#: Strings of any depth: never longer than a few hundred characters.
SMALL_TEXT: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(_WELL_FORMED),
    st.sampled_from(_NASTY),
    st.text(max_size=40),
    st.from_regex(r"[a-z0-9][-a-z0-9]{0,70}", fullmatch=True),
)
#: Strings of a request's own fields: sometimes far over any limit.
TEXT: st.SearchStrategy[str] = st.one_of(SMALL_TEXT, _huge_text())

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, -1, 0, 1, 2, 100, 1000, 1001, 2**31 - 1, 2**31) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(max(low, -(10**6)), min(high, 10**6)), st.integers(low, high))


def _scalar(field: FieldDescriptor, huge: bool = False) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT if huge else SMALL_TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        small = st.one_of(st.binary(max_size=64), st.just(BLOB))
        return st.one_of(small, st.just(bytes(1024 * 1024 + 1))) if huge else small
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 40))
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = _INT_RANGES[kind]
    return _integers(low, high)


def _many(element: st.SearchStrategy[Any], filler: st.SearchStrategy[Any], top: bool) -> st.SearchStrategy[list[Any]]:
    """Mostly small lists of `element`; sometimes many copies of a small `filler` (a huge
    repeated field; thousands only in a request's own fields, so nesting cannot multiply
    sizes out of memory)."""
    counts = [129, 2_001, 10_001] if top else [129]
    return st.one_of(
        st.lists(element, max_size=3),
        st.tuples(filler, st.sampled_from(counts)).map(lambda pair: [pair[0]] * pair[1]),
    )


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    top = depth == 0
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        value = _field_value(value_field, depth + 1)
        if value is None:
            return None
        maps = [st.dictionaries(_scalar(key_field), value, max_size=3)]
        if top and value_field.type == FieldDescriptor.TYPE_STRING:
            maps.append(st.sampled_from([65, 300]).map(lambda n: {f"k{i}": "v" for i in range(n)}))
        return st.one_of(*maps)
    element = _field_value(field, depth, huge=top and not field.is_repeated)
    if element is None:
        return None
    if field.is_repeated:
        if field.message_type is not None:
            filler: st.SearchStrategy[Any] = st.just(GetMessageClass(field.message_type)())
        else:
            filler = _scalar(field)
        return _many(element, filler, top)
    return element


def _field_value(field: FieldDescriptor, depth: int, huge: bool = False) -> st.SearchStrategy[Any] | None:
    if field.message_type is None:
        return _scalar(field, huge)
    if depth >= _MAX_DEPTH:
        return None
    return messages(field.message_type, depth + 1)


def _assign(message: Message, name: str, value: Any) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    target = getattr(message, name)
    try:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    except (ValueError, TypeError):
        # A value protobuf itself refuses (a string with a lone surrogate): the wire can't
        # carry it either, so leave the field unset.
        message.ClearField(name)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        _assign(message, name, value)
    return message


_CACHE: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with a random subset of fields set to hostile values."""
    key = (descriptor.full_name, depth)
    if key not in _CACHE:
        cls = GetMessageClass(descriptor)
        optional = {f.name: s for f in descriptor.fields if (s := _field(f, depth)) is not None}
        _CACHE[key] = st.deferred(lambda: st.fixed_dictionaries({}, optional=optional).map(lambda v: _build(cls, v)))
    return _CACHE[key]


@st.composite
def mutated(draw: st.DrawFn, seed: Message) -> Message:
    """`seed` (a valid request) with one to three fields, at any depth, set to hostile values:
    what reaches the checks a random message never gets past."""
    message = type(seed)()
    message.CopyFrom(seed)
    for _ in range(draw(st.integers(1, 3))):
        _mutate_one(draw, message, 0)
    return message


def _mutate_one(draw: st.DrawFn, message: Message, depth: int) -> None:
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    if not fields:
        return
    field = draw(st.sampled_from(fields))
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    if field.message_type is not None and not is_map and depth < _MAX_DEPTH + 1:
        if not field.is_repeated and message.HasField(field.name) and draw(st.booleans()):
            _mutate_one(draw, getattr(message, field.name), depth + 1)
            return
        items = getattr(message, field.name) if field.is_repeated else []
        if len(items) and draw(st.booleans()):
            _mutate_one(draw, items[draw(st.integers(0, len(items) - 1))], depth + 1)
            return
    strategy = _field(field, min(depth, 1))
    if strategy is None:
        return
    value = draw(strategy)
    message.ClearField(field.name)
    _assign(message, field.name, value)


def raw_request(descriptor: Descriptor, seeds: list[Message] | None = None) -> st.SearchStrategy[bytes]:
    """Bytes sent as a request of `descriptor`: mutations of valid `seeds`, random messages,
    and garbage that is not a valid protobuf of any type (wrong wire type, cut varint)."""
    garbage = st.one_of(
        st.binary(min_size=1, max_size=64),
        st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\x0d\x01", b"\x12\x05ab", b"\xff\xff\xff"]),
    )
    kinds = [messages(descriptor).map(lambda m: m.SerializeToString()), garbage]
    if seeds:
        valid = st.sampled_from(seeds)
        kinds += [
            valid.map(lambda m: m.SerializeToString()),
            *[valid.flatmap(mutated).map(lambda m: m.SerializeToString())] * 4,
        ]
    return st.one_of(*kinds)


def _rich_spec() -> Any:
    from google.protobuf.duration_pb2 import Duration

    from weft.v1 import pipeline_pb2

    spec = pipeline_pb2.PipelineSpec(
        parameters=[pipeline_pb2.Parameter(name="rows", default_value="10"), pipeline_pb2.Parameter(name="label")]
    )
    first = spec.steps.add(name="extract", outputs=[pipeline_pb2.Output(name="raw")])
    first.container.image = "busybox:1.36"
    first.container.command.extend(["sh", "-c"])
    first.container.args.append('printf x > "$WEFT_OUTPUTS/raw"')
    first.container.env.add(name="MODE", value="fast")
    first.container.env.add(name="TOKEN", secret=pipeline_pb2.SecretKeyRef(name="db", key="password"))
    first.container.resources.requests["cpu"] = "100m"
    first.inputs.add(name="rows", parameter="rows")
    first.cache.version = "1"
    first.retry.max_attempts = 2
    first.retry.backoff.CopyFrom(Duration(seconds=1))
    first.timeout.CopyFrom(Duration(seconds=60))
    second = spec.steps.add(name="load", outputs=[pipeline_pb2.Output(name="out")], depends_on=["extract"])
    second.container.image = "busybox:1.36"
    second.container.command.append("true")
    second.inputs.add(name="raw", step_output=pipeline_pb2.OutputRef(step="extract", output="raw"))
    second.inputs.add(name="note", literal="hello")
    second.inputs.add(name="label", parameter="label")
    return spec


def seeds(method: str) -> list[Message]:
    """Valid requests of `method` (by name) in the fuzz namespace, on the seeded records."""
    from weft.v1 import artifact_pb2, executor_pb2, pipeline_pb2, run_pb2

    parent = f"namespaces/{NAMESPACE}"
    digest = "sha256:" + __import__("hashlib").sha256(BLOB).hexdigest()
    header = artifact_pb2.BlobHeader(digest=digest, size_bytes=len(BLOB), namespace=NAMESPACE)
    table: dict[str, list[Message]] = {
        "CreatePipeline": [
            pipeline_pb2.CreatePipelineRequest(
                parent=parent,
                pipeline=pipeline_pb2.Pipeline(name="made", spec=_rich_spec(), labels={"team": "a"}),
                request_id="req-1",
            )
        ],
        "GetPipeline": [pipeline_pb2.GetPipelineRequest(name=PIPELINE)],
        "ListPipelines": [pipeline_pb2.ListPipelinesRequest(parent=parent, page_size=2, filter="label.team=a")],
        "ListPipelineVersions": [pipeline_pb2.ListPipelineVersionsRequest(name=PIPELINE, page_size=1)],
        "DeletePipeline": [pipeline_pb2.DeletePipelineRequest(name=f"{parent}/pipelines/absent")],
        "CreateRun": [
            run_pb2.CreateRunRequest(parent=parent, run=run_pb2.Run(pipeline="seeded", labels={"a": "b"})),
            run_pb2.CreateRunRequest(parent=parent, run=run_pb2.Run(pipeline="seeded"), request_id="r-1", run_id="x"),
        ],
        "GetRun": [run_pb2.GetRunRequest(name=RUN, view=run_pb2.RUN_VIEW_FULL)],
        "ListRuns": [run_pb2.ListRunsRequest(parent=parent, filter="state=PENDING pipeline=seeded", page_size=5)],
        "WatchRun": [run_pb2.WatchRunRequest(name=RUN)],
        "CancelRun": [run_pb2.CancelRunRequest(name=f"{parent}/runs/absent", reason="fuzz")],
        "ResumeRun": [run_pb2.ResumeRunRequest(name=RUN)],
        "ReplayRun": [run_pb2.ReplayRunRequest(name=RUN, request_id="replay-1")],
        "ExplainStep": [run_pb2.ExplainStepRequest(run=RUN, step="s0")],
        "DiffRuns": [run_pb2.DiffRunsRequest(run_a=RUN, run_b=RUN)],
        "GetLineage": [
            run_pb2.GetLineageRequest(run=RUN, step="s0"),
            run_pb2.GetLineageRequest(parent=parent, blob=digest, depth=2),
        ],
        "ReadLogs": [run_pb2.ReadLogsRequest(run=RUN, step="s0", attempt=1)],
        "PutBlob": [artifact_pb2.PutBlobRequest(header=header), artifact_pb2.PutBlobRequest(data=BLOB)],
        "GetBlob": [artifact_pb2.GetBlobRequest(digest=digest, namespace=NAMESPACE, offset=3)],
        "StatBlob": [artifact_pb2.StatBlobRequest(digest=digest, namespace=NAMESPACE)],
        "ReadAttemptLogs": [executor_pb2.ReadAttemptLogsRequest(run=RUN, step="s0", attempt=1)],
    }
    return table[method]
