import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_UNSPECIFIED: _ClassVar[CacheMode]
    CACHE_MODE_USE: _ClassVar[CacheMode]
    CACHE_MODE_REFRESH: _ClassVar[CacheMode]
    CACHE_MODE_OFF: _ClassVar[CacheMode]

class RunView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_VIEW_UNSPECIFIED: _ClassVar[RunView]
    RUN_VIEW_BASIC: _ClassVar[RunView]
    RUN_VIEW_FULL: _ClassVar[RunView]

class LineageDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINEAGE_DIRECTION_UNSPECIFIED: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_UPSTREAM: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_DOWNSTREAM: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_BOTH: _ClassVar[LineageDirection]
CACHE_MODE_UNSPECIFIED: CacheMode
CACHE_MODE_USE: CacheMode
CACHE_MODE_REFRESH: CacheMode
CACHE_MODE_OFF: CacheMode
RUN_VIEW_UNSPECIFIED: RunView
RUN_VIEW_BASIC: RunView
RUN_VIEW_FULL: RunView
LINEAGE_DIRECTION_UNSPECIFIED: LineageDirection
LINEAGE_DIRECTION_UPSTREAM: LineageDirection
LINEAGE_DIRECTION_DOWNSTREAM: LineageDirection
LINEAGE_DIRECTION_BOTH: LineageDirection

class Run(_message.Message):
    __slots__ = ("name", "pipeline", "pipeline_version", "parameters", "parameter_digests", "state", "options", "create_time", "start_time", "end_time", "message", "failed_step", "traceparent", "resumed_from", "steps", "step_counts", "labels", "etag", "replay_of", "created_by", "cancelled_by")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Run.State]
        STATE_PENDING: _ClassVar[Run.State]
        STATE_RUNNING: _ClassVar[Run.State]
        STATE_SUCCEEDED: _ClassVar[Run.State]
        STATE_FAILED: _ClassVar[Run.State]
        STATE_CANCELLING: _ClassVar[Run.State]
        STATE_CANCELLED: _ClassVar[Run.State]
    STATE_UNSPECIFIED: Run.State
    STATE_PENDING: Run.State
    STATE_RUNNING: Run.State
    STATE_SUCCEEDED: Run.State
    STATE_FAILED: Run.State
    STATE_CANCELLING: Run.State
    STATE_CANCELLED: Run.State
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParameterDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StepCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REPLAY_OF_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    pipeline: str
    pipeline_version: str
    parameters: _containers.ScalarMap[str, str]
    parameter_digests: _containers.ScalarMap[str, str]
    state: Run.State
    options: RunOptions
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    message: str
    failed_step: str
    traceparent: str
    resumed_from: str
    steps: _containers.RepeatedCompositeFieldContainer[StepRun]
    step_counts: _containers.ScalarMap[str, int]
    labels: _containers.ScalarMap[str, str]
    etag: str
    replay_of: str
    created_by: str
    cancelled_by: str
    def __init__(self, name: _Optional[str] = ..., pipeline: _Optional[str] = ..., pipeline_version: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., parameter_digests: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[Run.State, str]] = ..., options: _Optional[_Union[RunOptions, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., failed_step: _Optional[str] = ..., traceparent: _Optional[str] = ..., resumed_from: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepRun, _Mapping]]] = ..., step_counts: _Optional[_Mapping[str, int]] = ..., labels: _Optional[_Mapping[str, str]] = ..., etag: _Optional[str] = ..., replay_of: _Optional[str] = ..., created_by: _Optional[str] = ..., cancelled_by: _Optional[str] = ...) -> None: ...

class RunOptions(_message.Message):
    __slots__ = ("cache_mode", "only_steps", "rerun_steps")
    CACHE_MODE_FIELD_NUMBER: _ClassVar[int]
    ONLY_STEPS_FIELD_NUMBER: _ClassVar[int]
    RERUN_STEPS_FIELD_NUMBER: _ClassVar[int]
    cache_mode: CacheMode
    only_steps: _containers.RepeatedScalarFieldContainer[str]
    rerun_steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cache_mode: _Optional[_Union[CacheMode, str]] = ..., only_steps: _Optional[_Iterable[str]] = ..., rerun_steps: _Optional[_Iterable[str]] = ...) -> None: ...

class StepRun(_message.Message):
    __slots__ = ("step", "state", "attempts", "dna", "outcome", "message", "ready_time", "end_time", "executor", "explanation", "reused_from_run")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[StepRun.State]
        STATE_WAITING: _ClassVar[StepRun.State]
        STATE_READY: _ClassVar[StepRun.State]
        STATE_RUNNING: _ClassVar[StepRun.State]
        STATE_SUCCEEDED: _ClassVar[StepRun.State]
        STATE_CACHED: _ClassVar[StepRun.State]
        STATE_FAILED: _ClassVar[StepRun.State]
        STATE_SKIPPED: _ClassVar[StepRun.State]
        STATE_CANCELLED: _ClassVar[StepRun.State]
    STATE_UNSPECIFIED: StepRun.State
    STATE_WAITING: StepRun.State
    STATE_READY: StepRun.State
    STATE_RUNNING: StepRun.State
    STATE_SUCCEEDED: StepRun.State
    STATE_CACHED: StepRun.State
    STATE_FAILED: StepRun.State
    STATE_SKIPPED: StepRun.State
    STATE_CANCELLED: StepRun.State
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DNA_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    READY_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_RUN_FIELD_NUMBER: _ClassVar[int]
    step: str
    state: StepRun.State
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    dna: str
    outcome: Outcome
    message: str
    ready_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    executor: str
    explanation: StepExplanation
    reused_from_run: str
    def __init__(self, step: _Optional[str] = ..., state: _Optional[_Union[StepRun.State, str]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., dna: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., message: _Optional[str] = ..., ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., executor: _Optional[str] = ..., explanation: _Optional[_Union[StepExplanation, _Mapping]] = ..., reused_from_run: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("number", "state", "executor", "handle", "start_time", "end_time", "exit_code", "message", "stdout_digest", "stderr_digest", "replica", "output_digests", "image_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Attempt.State]
        STATE_RUNNING: _ClassVar[Attempt.State]
        STATE_SUCCEEDED: _ClassVar[Attempt.State]
        STATE_FAILED: _ClassVar[Attempt.State]
        STATE_CANCELLED: _ClassVar[Attempt.State]
        STATE_LOST: _ClassVar[Attempt.State]
        STATE_UNCONFIRMED: _ClassVar[Attempt.State]
    STATE_UNSPECIFIED: Attempt.State
    STATE_RUNNING: Attempt.State
    STATE_SUCCEEDED: Attempt.State
    STATE_FAILED: Attempt.State
    STATE_CANCELLED: Attempt.State
    STATE_LOST: Attempt.State
    STATE_UNCONFIRMED: Attempt.State
    class OutputDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STDERR_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    number: int
    state: Attempt.State
    executor: str
    handle: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    exit_code: int
    message: str
    stdout_digest: str
    stderr_digest: str
    replica: int
    output_digests: _containers.ScalarMap[str, str]
    image_id: str
    def __init__(self, number: _Optional[int] = ..., state: _Optional[_Union[Attempt.State, str]] = ..., executor: _Optional[str] = ..., handle: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., stdout_digest: _Optional[str] = ..., stderr_digest: _Optional[str] = ..., replica: _Optional[int] = ..., output_digests: _Optional[_Mapping[str, str]] = ..., image_id: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("dna", "outputs", "run", "step", "attempt", "executor", "handle", "start_time", "end_time", "input_outcomes", "commit_time", "input_outcomes_digest", "image_id")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class InputOutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DNA_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    INPUT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    INPUT_OUTCOMES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    dna: str
    outputs: _containers.ScalarMap[str, str]
    run: str
    step: str
    attempt: int
    executor: str
    handle: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    input_outcomes: _containers.ScalarMap[str, str]
    commit_time: _timestamp_pb2.Timestamp
    input_outcomes_digest: str
    image_id: str
    def __init__(self, dna: _Optional[str] = ..., outputs: _Optional[_Mapping[str, str]] = ..., run: _Optional[str] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., executor: _Optional[str] = ..., handle: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_outcomes: _Optional[_Mapping[str, str]] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_outcomes_digest: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class DnaComponent(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("parent", "run", "run_id", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    run: Run
    run_id: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., run: _Optional[_Union[Run, _Mapping]] = ..., run_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("name", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    view: RunView
    def __init__(self, name: _Optional[str] = ..., view: _Optional[_Union[RunView, str]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "filter", "view")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    filter: str
    view: RunView
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ..., view: _Optional[_Union[RunView, str]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("name", "start_revision", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    start_revision: int
    view: RunView
    def __init__(self, name: _Optional[str] = ..., start_revision: _Optional[int] = ..., view: _Optional[_Union[RunView, str]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("revision", "run", "step", "snapshot", "last_in_revision")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    LAST_IN_REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    run: Run
    step: StepRun
    snapshot: bool
    last_in_revision: bool
    def __init__(self, revision: _Optional[int] = ..., run: _Optional[_Union[Run, _Mapping]] = ..., step: _Optional[_Union[StepRun, _Mapping]] = ..., snapshot: _Optional[bool] = ..., last_in_revision: _Optional[bool] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("name", "latest_version", "run_id", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: bool
    run_id: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[bool] = ..., run_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReplayRunRequest(_message.Message):
    __slots__ = ("name", "run_id", "request_id", "steps", "with_upstream")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WITH_UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    name: str
    run_id: str
    request_id: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    with_upstream: bool
    def __init__(self, name: _Optional[str] = ..., run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., with_upstream: _Optional[bool] = ...) -> None: ...

class ExplainStepRequest(_message.Message):
    __slots__ = ("run", "step")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    run: str
    step: str
    def __init__(self, run: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class StepExplanation(_message.Message):
    __slots__ = ("dna", "components", "decision", "reason", "outcome", "components_digest", "image_hashed_as", "compared_run", "compared_step", "compared_outcome", "changes")
    class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DECISION_UNSPECIFIED: _ClassVar[StepExplanation.Decision]
        DECISION_HIT: _ClassVar[StepExplanation.Decision]
        DECISION_MISS: _ClassVar[StepExplanation.Decision]
        DECISION_RESUMED: _ClassVar[StepExplanation.Decision]
    DECISION_UNSPECIFIED: StepExplanation.Decision
    DECISION_HIT: StepExplanation.Decision
    DECISION_MISS: StepExplanation.Decision
    DECISION_RESUMED: StepExplanation.Decision
    DNA_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HASHED_AS_FIELD_NUMBER: _ClassVar[int]
    COMPARED_RUN_FIELD_NUMBER: _ClassVar[int]
    COMPARED_STEP_FIELD_NUMBER: _ClassVar[int]
    COMPARED_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    dna: str
    components: _containers.RepeatedCompositeFieldContainer[DnaComponent]
    decision: StepExplanation.Decision
    reason: str
    outcome: Outcome
    components_digest: str
    image_hashed_as: str
    compared_run: str
    compared_step: str
    compared_outcome: Outcome
    changes: _containers.RepeatedCompositeFieldContainer[ComponentChange]
    def __init__(self, dna: _Optional[str] = ..., components: _Optional[_Iterable[_Union[DnaComponent, _Mapping]]] = ..., decision: _Optional[_Union[StepExplanation.Decision, str]] = ..., reason: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., components_digest: _Optional[str] = ..., image_hashed_as: _Optional[str] = ..., compared_run: _Optional[str] = ..., compared_step: _Optional[str] = ..., compared_outcome: _Optional[_Union[Outcome, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[ComponentChange, _Mapping]]] = ...) -> None: ...

class ComponentChange(_message.Message):
    __slots__ = ("name", "old_value", "new_value", "cause", "upstream_step")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    old_value: str
    new_value: str
    cause: str
    upstream_step: str
    def __init__(self, name: _Optional[str] = ..., old_value: _Optional[str] = ..., new_value: _Optional[str] = ..., cause: _Optional[str] = ..., upstream_step: _Optional[str] = ...) -> None: ...

class DiffRunsRequest(_message.Message):
    __slots__ = ("run_a", "run_b", "page_size", "page_token")
    RUN_A_FIELD_NUMBER: _ClassVar[int]
    RUN_B_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_a: str
    run_b: str
    page_size: int
    page_token: str
    def __init__(self, run_a: _Optional[str] = ..., run_b: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class StepDiff(_message.Message):
    __slots__ = ("step", "kind", "dna_a", "dna_b", "changes", "outputs_differ", "caused_by", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[StepDiff.Kind]
        KIND_ROOT_CAUSE: _ClassVar[StepDiff.Kind]
        KIND_INPUT_CHANGED: _ClassVar[StepDiff.Kind]
        KIND_NONDETERMINISTIC: _ClassVar[StepDiff.Kind]
        KIND_ADDED: _ClassVar[StepDiff.Kind]
        KIND_REMOVED: _ClassVar[StepDiff.Kind]
        KIND_INCOMPARABLE: _ClassVar[StepDiff.Kind]
        KIND_SAME: _ClassVar[StepDiff.Kind]
    KIND_UNSPECIFIED: StepDiff.Kind
    KIND_ROOT_CAUSE: StepDiff.Kind
    KIND_INPUT_CHANGED: StepDiff.Kind
    KIND_NONDETERMINISTIC: StepDiff.Kind
    KIND_ADDED: StepDiff.Kind
    KIND_REMOVED: StepDiff.Kind
    KIND_INCOMPARABLE: StepDiff.Kind
    KIND_SAME: StepDiff.Kind
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DNA_A_FIELD_NUMBER: _ClassVar[int]
    DNA_B_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_DIFFER_FIELD_NUMBER: _ClassVar[int]
    CAUSED_BY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: str
    kind: StepDiff.Kind
    dna_a: str
    dna_b: str
    changes: _containers.RepeatedCompositeFieldContainer[ComponentChange]
    outputs_differ: bool
    caused_by: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, step: _Optional[str] = ..., kind: _Optional[_Union[StepDiff.Kind, str]] = ..., dna_a: _Optional[str] = ..., dna_b: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[ComponentChange, _Mapping]]] = ..., outputs_differ: _Optional[bool] = ..., caused_by: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class DiffRunsResponse(_message.Message):
    __slots__ = ("run_a", "run_b", "steps", "next_page_token")
    RUN_A_FIELD_NUMBER: _ClassVar[int]
    RUN_B_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_a: str
    run_b: str
    steps: _containers.RepeatedCompositeFieldContainer[StepDiff]
    next_page_token: str
    def __init__(self, run_a: _Optional[str] = ..., run_b: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepDiff, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadLogsRequest(_message.Message):
    __slots__ = ("run", "step", "attempt", "follow")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run: str
    step: str
    attempt: int
    follow: bool
    def __init__(self, run: _Optional[str] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stream", "data", "attempt")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[LogChunk.Stream]
        STREAM_STDOUT: _ClassVar[LogChunk.Stream]
        STREAM_STDERR: _ClassVar[LogChunk.Stream]
    STREAM_UNSPECIFIED: LogChunk.Stream
    STREAM_STDOUT: LogChunk.Stream
    STREAM_STDERR: LogChunk.Stream
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    stream: LogChunk.Stream
    data: bytes
    attempt: int
    def __init__(self, stream: _Optional[_Union[LogChunk.Stream, str]] = ..., data: _Optional[bytes] = ..., attempt: _Optional[int] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("parent", "run", "step", "outcome", "blob", "direction", "depth", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    run: str
    step: str
    outcome: str
    blob: str
    direction: LineageDirection
    depth: int
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., run: _Optional[str] = ..., step: _Optional[str] = ..., outcome: _Optional[str] = ..., blob: _Optional[str] = ..., direction: _Optional[_Union[LineageDirection, str]] = ..., depth: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LineageNode(_message.Message):
    __slots__ = ("dna", "run", "step", "outputs", "inputs", "input_outcomes", "components", "distance", "end_time", "unindexed")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class InputOutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DNA_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UNINDEXED_FIELD_NUMBER: _ClassVar[int]
    dna: str
    run: str
    step: str
    outputs: _containers.ScalarMap[str, str]
    inputs: _containers.ScalarMap[str, str]
    input_outcomes: _containers.ScalarMap[str, str]
    components: _containers.RepeatedCompositeFieldContainer[DnaComponent]
    distance: int
    end_time: _timestamp_pb2.Timestamp
    unindexed: bool
    def __init__(self, dna: _Optional[str] = ..., run: _Optional[str] = ..., step: _Optional[str] = ..., outputs: _Optional[_Mapping[str, str]] = ..., inputs: _Optional[_Mapping[str, str]] = ..., input_outcomes: _Optional[_Mapping[str, str]] = ..., components: _Optional[_Iterable[_Union[DnaComponent, _Mapping]]] = ..., distance: _Optional[int] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unindexed: _Optional[bool] = ...) -> None: ...

class LineageEdge(_message.Message):
    __slots__ = ("producer", "consumer", "input")
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    producer: str
    consumer: str
    input: str
    def __init__(self, producer: _Optional[str] = ..., consumer: _Optional[str] = ..., input: _Optional[str] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("nodes", "edges", "blob_producers", "blob_consumers", "next_page_token", "truncated")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    BLOB_PRODUCERS_FIELD_NUMBER: _ClassVar[int]
    BLOB_CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[LineageNode]
    edges: _containers.RepeatedCompositeFieldContainer[LineageEdge]
    blob_producers: _containers.RepeatedScalarFieldContainer[str]
    blob_consumers: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    truncated: bool
    def __init__(self, nodes: _Optional[_Iterable[_Union[LineageNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[LineageEdge, _Mapping]]] = ..., blob_producers: _Optional[_Iterable[str]] = ..., blob_consumers: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...
