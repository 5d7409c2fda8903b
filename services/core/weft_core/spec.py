"""Pipeline specs: names, validation, the canonical encoding and version digest, the DAG.

Shared by weft-api (which validates and versions specs) and weft-executor (which walks
the DAG). Validation reports every problem it finds, each prefixed with the path of the
offending field (`pipeline.spec.steps[3].inputs[0].step_output.step: ...`) and saying how
to fix it; it raises `InvalidArgument` and never touches etcd or the artifact store.

The version digest is `sha256:<hex>` of the canonical JSON of the PipelineSpec (proto3
JSON with field names as in the .proto, keys sorted, no whitespace), so two specs that
differ only in the order of YAML keys or map entries have the same digest. Description
and labels are not part of the spec, so they never change the digest.

Every function here is linear in the size of the spec: a 10,000-step pipeline validates
and hashes in well under a second, a 50,000-step one (the limit) in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import json_format

from weft.v1 import pipeline_pb2
from weft_core.errors import InvalidArgument

#: Most steps a pipeline may have (exactly this many is accepted).
MAX_STEPS = 50_000
#: Largest serialized PipelineSpec accepted. Specs over `pipelines.INLINE_SPEC_BYTES`
#: are stored as a blob, so this bounds the artifact store's use, not etcd's.
MAX_SPEC_BYTES = 16 * 1024 * 1024
#: Most problems listed in one error message (the rest are counted).
MAX_REPORTED_PROBLEMS = 5
#: Upper bounds that catch typos (e.g. 1000 replicas) rather than real limits.
MAX_ATTEMPTS = 100
MAX_REPLICAS = 16
MAX_LABELS = 64
#: Longest container working_dir (Linux's PATH_MAX is 4096).
MAX_WORKING_DIR_CHARS = 4096
DEFAULT_NAMESPACE = "default"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PARAMETER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._A-Za-z0-9]+$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

DNS_LABEL_RULE = (
    "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit (e.g. \"etl-daily\")"
)
PARAMETER_RULE = "use at most 63 letters, digits, '_' and '-', starting with a letter or '_' (e.g. \"input_path\")"
FILE_NAME_RULE = "use at most 63 letters, digits, '_', '-' and '.', not starting with '.' (e.g. \"data.csv\")"


# Names ------------------------------------------------------------------------------


def dns_label_problem(value: str) -> str:
    """Why `value` is not a DNS-1123 label (at most 63 characters), or "" if it is one."""
    if not value:
        return f"must not be empty; {DNS_LABEL_RULE}"
    if len(value) > 63 or not _DNS_LABEL.match(value):
        return f'"{_shorten(value)}" is not a valid name ({len(value)} characters); {DNS_LABEL_RULE}'
    return ""


def check_dns_label(value: str, field: str) -> str:
    """Returns `value` if it is a DNS-1123 label, else raises InvalidArgument naming `field`."""
    problem = dns_label_problem(value)
    if problem:
        raise InvalidArgument(f"{field}: {problem}", field=field)
    return value


def _identifier_problem(value: str, pattern: re.Pattern[str], rule: str) -> str:
    if not value:
        return f"must not be empty; {rule}"
    if len(value) > 63 or not pattern.match(value):
        return f'"{_shorten(value)}" is not a valid name; {rule}'
    return ""


def parameter_name_problem(value: str) -> str:
    """Why `value` is not a parameter name, or ""."""
    return _identifier_problem(value, _PARAMETER, PARAMETER_RULE)


def parameter_variable(name: str) -> str:
    """The environment variable through which steps read parameter `name`.

    `input-path` becomes `WEFT_PARAM_INPUT_PATH`: upper-cased, every character other than
    a letter or digit turned into '_' (the executor's rule for the variable's tail).
    """
    return "WEFT_PARAM_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def file_name_problem(value: str) -> str:
    """Why `value` is not an input or output name, or ""."""
    return _identifier_problem(value, _FILE_NAME, FILE_NAME_RULE)


#: Longest name of a step expanded from a used pipeline (`normalise.clean`); pod names
#: are cut and hashed, so only etcd keys carry it whole.
MAX_EXPANDED_NAME = 253


def expanded_step_name_problem(name: str, prefixes: set[str]) -> str:
    """Why a dotted step name is not one of a used pipeline's steps, or "" if it is one.

    Such a name is `<prefix>.<step>` where `<prefix>` is recorded in `PipelineSpec.uses`
    (weft_core/composition.py writes both) and every part is a DNS-1123 label.
    """
    for part in name.split("."):
        problem = dns_label_problem(part)
        if problem:
            return problem
    if len(name) > MAX_EXPANDED_NAME:
        return f"{len(name)} characters exceed the limit of {MAX_EXPANDED_NAME} for a used pipeline's step"
    prefix = name.rpartition(".")[0]
    if prefix not in prefixes:
        return (
            f"\"{_shorten(name)}\" has a '.', which only the steps of a used pipeline have, and no pipeline "
            f"is used as \"{_shorten(prefix)}\"; name the step without '.', or use a pipeline with "
            "`pipeline: {name, version}`"
        )
    return ""


def _shorten(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


# Resource names ---------------------------------------------------------------------


def namespace_name(ns: str) -> str:
    return f"namespaces/{ns}"


def pipeline_name(ns: str, pipeline: str) -> str:
    return f"namespaces/{ns}/pipelines/{pipeline}"


def run_name(ns: str, run: str) -> str:
    return f"namespaces/{ns}/runs/{run}"


def parse_namespace(parent: str, field: str = "parent") -> str:
    """The namespace of `namespaces/{ns}` ("" means the default namespace)."""
    if not parent:
        return DEFAULT_NAMESPACE
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "namespaces":
        raise InvalidArgument(
            f'{field}: "{_shorten(parent)}" is not a namespace name; use "namespaces/NAMESPACE" '
            f'(e.g. "namespaces/{DEFAULT_NAMESPACE}") or leave it empty for the default namespace',
            field=field,
        )
    return check_dns_label(parts[1], f"{field} (namespace)")


def _parse_resource(name: str, collection: str, field: str, default_ns: str | None) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) == 1 and default_ns is not None:
        return default_ns, check_dns_label(name, field)
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != collection:
        short = " or just the id" if default_ns is not None else ""
        raise InvalidArgument(
            f'{field}: "{_shorten(name)}" is not a {collection[:-1]} name; use '
            f'"namespaces/NAMESPACE/{collection}/ID"{short} (e.g. "namespaces/{DEFAULT_NAMESPACE}/{collection}/etl")',
            field=field,
        )
    return check_dns_label(parts[1], f"{field} (namespace)"), check_dns_label(parts[3], field)


def parse_pipeline_name(name: str, field: str = "name", default_ns: str | None = None) -> tuple[str, str]:
    """(namespace, pipeline) of `namespaces/{ns}/pipelines/{p}`; a bare id is accepted when
    `default_ns` is given."""
    return _parse_resource(name, "pipelines", field, default_ns)


def parse_run_name(name: str, field: str = "name", default_ns: str | None = None) -> tuple[str, str]:
    """(namespace, run) of `namespaces/{ns}/runs/{r}`; a bare id is accepted when
    `default_ns` is given."""
    return _parse_resource(name, "runs", field, default_ns)


def label_problems(labels: Mapping[str, str], field: str) -> list[tuple[str, str]]:
    """(field path, problem) for every invalid label."""
    problems: list[tuple[str, str]] = []
    if len(labels) > MAX_LABELS:
        problems.append((field, f"{len(labels)} labels exceed the limit of {MAX_LABELS}; keep the ones you filter by"))
    for key, value in labels.items():
        name = key.rpartition("/")[2]
        if not _LABEL_KEY.match(key) or len(name) > 63 or len(key) > 253:
            problems.append(
                (
                    f'{field}["{_shorten(key)}"]',
                    "is not a valid label key; use at most 63 letters, digits, '-', '_' and '.' "
                    "(optionally after a DNS prefix and '/')",
                )
            )
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(
                (
                    f'{field}["{_shorten(key)}"]',
                    f'value "{_shorten(value)}" is not a valid label value; use at most 63 letters, digits, '
                    "'-', '_' and '.', starting and ending with a letter or digit",
                )
            )
    return problems


def raise_problems(problems: Sequence[tuple[str, str]]) -> None:
    """Raises one InvalidArgument listing `problems` (field path, message), if any."""
    if not problems:
        return
    shown = [f"{path}: {message}" for path, message in problems[:MAX_REPORTED_PROBLEMS]]
    more = len(problems) - MAX_REPORTED_PROBLEMS
    text = "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")
    raise InvalidArgument(text, field=problems[0][0])


# Validation ---------------------------------------------------------------------------


def validate_pipeline(pipeline: pipeline_pb2.Pipeline, field: str = "pipeline") -> Dag:
    """Checks a pipeline's name, labels and spec; returns the spec's DAG.

    `pipeline.name` must already be the bare pipeline id (the api strips the resource
    prefix first).

    Raises:
        InvalidArgument: Listing every problem found, each with its field path and fix.
    """
    problems: list[tuple[str, str]] = []
    name_problem = dns_label_problem(pipeline.name)
    if name_problem:
        problems.append((f"{field}.name", name_problem))
    if len(pipeline.description) > 4096:
        problems.append((f"{field}.description", f"{len(pipeline.description)} characters exceed the limit of 4096"))
    problems.extend(label_problems(pipeline.labels, f"{field}.labels"))
    raise_problems(problems)
    return validate_spec(pipeline.spec, f"{field}.spec")


def validate_spec(spec: pipeline_pb2.PipelineSpec, field: str = "pipeline.spec") -> Dag:
    """Checks a PipelineSpec completely; returns its DAG.

    Checks: size and step count limits, parameter/step/input/output names and their
    uniqueness, every reference (parameter, step, output, depends_on), containers
    (image, command, env), policies, and that the steps form no cycle.

    Raises:
        InvalidArgument: Listing every problem found, each with its field path and fix.
    """
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        raise InvalidArgument(
            f"{field}: the spec is {size / 2**20:.1f} MiB, over the limit of {MAX_SPEC_BYTES // 2**20} MiB; "
            "move large literal inputs into parameters or upstream steps' outputs, or split the pipeline",
            field=field,
        )
    if len(spec.steps) > MAX_STEPS:
        raise InvalidArgument(
            f"{field}.steps: {len(spec.steps)} steps exceed the limit of {MAX_STEPS}; split the pipeline",
            field=f"{field}.steps",
        )
    if not spec.steps:
        raise InvalidArgument(f"{field}.steps: a pipeline needs at least one step", field=f"{field}.steps")

    problems: list[tuple[str, str]] = []
    parameters: set[str] = set()
    # Steps see parameter `p` as $WEFT_PARAM_<P>: two names with the same variable would
    # silently hand one parameter's value to a step that reads the other.
    by_variable: dict[str, str] = {}
    for i, parameter in enumerate(spec.parameters):
        path = f"{field}.parameters[{i}].name"
        problem = parameter_name_problem(parameter.name)
        variable = parameter_variable(parameter.name)
        if problem:
            problems.append((path, problem))
        elif parameter.name in parameters:
            problems.append((path, f'parameter "{parameter.name}" is declared twice; rename or remove one'))
        elif variable in by_variable:
            problems.append(
                (
                    path,
                    f'parameter "{parameter.name}" and parameter "{by_variable[variable]}" both reach steps as '
                    f"${variable} (names are upper-cased and '-' becomes '_'); rename one of them",
                )
            )
        parameters.add(parameter.name)
        by_variable.setdefault(variable, parameter.name)

    prefixes = {use.step for use in spec.uses}
    problems.extend(_use_problems(spec, field))
    outputs_of: dict[str, set[str]] = {}
    index_of: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        path = f"{field}.steps[{i}].name"
        problem = expanded_step_name_problem(step.name, prefixes) if "." in step.name else dns_label_problem(step.name)
        if problem:
            problems.append((path, problem))
        elif step.name in index_of:
            problems.append(
                (path, f'step "{step.name}" is declared twice (also steps[{index_of[step.name]}]); rename one')
            )
            continue
        index_of[step.name] = i
        outputs_of[step.name] = {o.name for o in step.outputs}

    for i, step in enumerate(spec.steps):
        problems.extend(_step_problems(step, f"{field}.steps[{i}]", parameters, outputs_of))
        if len(problems) > 10 * MAX_REPORTED_PROBLEMS:
            break  # the report shows a few; stop early on a spec that is wrong everywhere
    raise_problems(problems)

    dag = Dag.from_spec(spec)
    cycle = dag.find_cycle()
    if cycle:
        first = index_of[cycle[0]]
        raise InvalidArgument(
            f"{field}.steps[{first}]: the steps form a cycle: {' -> '.join([*cycle, cycle[0]])} "
            "(each step reads from or depends on the one before it); remove one of these edges",
            field=f"{field}.steps[{first}]",
        )
    return dag


def _duration_problem(duration: object, path: str) -> list[tuple[str, str]]:
    seconds = getattr(duration, "seconds", 0)
    nanos = getattr(duration, "nanos", 0)
    if seconds < 0 or nanos < 0:
        return [(path, "must not be negative")]
    return []


def working_dir_problem(working_dir: str) -> str:
    """Why a container's `working_dir` is refused, or "" when it is acceptable.

    An absolute path names a directory inside the container (Kubernetes) or on the
    machine (local runtime, which checks that it exists). A relative path is created inside
    the attempt's own directory, so it must stay there: a `..` component could climb out
    of it, whatever the runtime's own guard does.
    """
    if not working_dir:
        return ""
    if "\0" in working_dir:
        return "contains a NUL character; give a directory path"
    if len(working_dir) > MAX_WORKING_DIR_CHARS:
        return f"has {len(working_dir)} characters, over the limit of {MAX_WORKING_DIR_CHARS}"
    if not working_dir.startswith("/") and ".." in working_dir.split("/"):
        return (
            f'"{_shorten(working_dir)}" climbs out of the step\'s working directory (".."); use a relative path '
            'inside it (e.g. "src/app") or an absolute path inside the container (e.g. "/app")'
        )
    return ""


def _use_problems(spec: pipeline_pb2.PipelineSpec, field: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for i, use in enumerate(spec.uses):
        path = f"{field}.uses[{i}]"
        for part in use.step.split("."):
            if dns_label_problem(part):
                problems.append((f"{path}.step", dns_label_problem(part)))
                break
        if dns_label_problem(use.pipeline.name):
            problems.append((f"{path}.pipeline.name", dns_label_problem(use.pipeline.name)))
        if not re.match(r"^sha256:[0-9a-f]{64}$", use.pipeline.version):
            problems.append((f"{path}.pipeline.version", "must be a full version digest (sha256:<64 hex digits>)"))
    return problems


def _step_problems(
    step: pipeline_pb2.Step, path: str, parameters: set[str], outputs_of: Mapping[str, set[str]]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if step.HasField("pipeline"):
        # CreatePipeline expands such steps (weft_core/composition.py) before validating.
        return [(f"{path}.pipeline", "a step that uses a pipeline must be expanded by CreatePipeline first")]
    container = step.container
    if not container.image.strip():
        problems.append((f"{path}.container.image", 'is required; set the image to run (e.g. "python:3.11-slim")'))
    if not container.command:
        problems.append(
            (f"{path}.container.command", 'is required; set the program to run (e.g. ["sh", "-c", "echo hi"])')
        )
    problem = working_dir_problem(container.working_dir)
    if problem:
        problems.append((f"{path}.container.working_dir", problem))
    env_names: set[str] = set()
    for j, env in enumerate(container.env):
        env_path = f"{path}.container.env[{j}]"
        if not _ENV_NAME.match(env.name):
            problems.append((f"{env_path}.name", f'"{_shorten(env.name)}" is not a valid environment variable name'))
        elif env.name in env_names:
            problems.append((f"{env_path}.name", f'"{env.name}" is set twice; remove one'))
        env_names.add(env.name)
        if env.WhichOneof("source") == "secret":
            if dns_label_problem(env.secret.name) and not re.match(
                r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", env.secret.name
            ):
                problems.append(
                    (f"{env_path}.secret.name", "must name a secret (lower-case letters, digits, '-', '.')")
                )
            if not _SECRET_KEY.match(env.secret.key):
                problems.append(
                    (f"{env_path}.secret.key", "must name a key of the secret (letters, digits, '-', '_', '.')")
                )
    for kind in ("requests", "limits"):
        for key, quantity in getattr(container.resources, kind).items():
            if not _QUANTITY.match(quantity):
                problems.append(
                    (
                        f'{path}.container.resources.{kind}["{key}"]',
                        f'"{_shorten(quantity)}" is not a quantity; use Kubernetes syntax like "500m", "2", "1Gi"',
                    )
                )

    output_names: set[str] = set()
    for j, output in enumerate(step.outputs):
        problem = file_name_problem(output.name)
        if problem:
            problems.append((f"{path}.outputs[{j}].name", problem))
        elif output.name in output_names:
            problems.append((f"{path}.outputs[{j}].name", f'output "{output.name}" is declared twice; remove one'))
        output_names.add(output.name)

    input_names: set[str] = set()
    for j, item in enumerate(step.inputs):
        input_path = f"{path}.inputs[{j}]"
        problem = file_name_problem(item.name)
        if problem:
            problems.append((f"{input_path}.name", problem))
        elif item.name in input_names:
            problems.append((f"{input_path}.name", f'input "{item.name}" is declared twice; rename one'))
        input_names.add(item.name)
        source = item.WhichOneof("source")
        if source is None:
            problems.append((input_path, f'input "{item.name}" has no source; set parameter, step_output or literal'))
        elif source == "parameter" and item.parameter not in parameters:
            known = ", ".join(sorted(parameters)) or "none"
            problems.append(
                (
                    f"{input_path}.parameter",
                    f'parameter "{_shorten(item.parameter)}" does not exist (declared: {known}); '
                    "declare it under spec.parameters or fix the reference",
                )
            )
        elif source == "step_output":
            ref = item.step_output
            if ref.step == step.name:
                problems.append((f"{input_path}.step_output.step", "a step cannot read its own output"))
            elif ref.step not in outputs_of:
                problems.append(
                    (
                        f"{input_path}.step_output.step",
                        f'step "{_shorten(ref.step)}" does not exist; declare it or fix the reference',
                    )
                )
            elif ref.output not in outputs_of[ref.step]:
                known = ", ".join(sorted(outputs_of[ref.step])) or "none"
                problems.append(
                    (
                        f"{input_path}.step_output.output",
                        f'step "{ref.step}" has no output "{_shorten(ref.output)}" (its outputs: {known}); '
                        "declare it in that step's outputs or fix the reference",
                    )
                )
    for j, upstream in enumerate(step.depends_on):
        if upstream == step.name:
            problems.append((f"{path}.depends_on[{j}]", "a step cannot depend on itself"))
        elif upstream not in outputs_of:
            problems.append(
                (
                    f"{path}.depends_on[{j}]",
                    f'step "{_shorten(upstream)}" does not exist; declare it or fix the reference',
                )
            )

    if step.HasField("timeout"):
        problems.extend(_duration_problem(step.timeout, f"{path}.timeout"))
    retry = step.retry
    if not 0 <= retry.max_attempts <= MAX_ATTEMPTS:
        problems.append((f"{path}.retry.max_attempts", f"must be between 0 and {MAX_ATTEMPTS}"))
    if retry.backoff_factor < 0 or not math.isfinite(retry.backoff_factor):
        problems.append((f"{path}.retry.backoff_factor", "must be a finite number ≥ 0 (0 means 2)"))
    problems.extend(_duration_problem(retry.backoff, f"{path}.retry.backoff"))
    problems.extend(_duration_problem(retry.max_backoff, f"{path}.retry.max_backoff"))
    problems.extend(_duration_problem(step.cache.max_age, f"{path}.cache.max_age"))
    redundancy = step.redundancy
    if not 0 <= redundancy.replicas <= MAX_REPLICAS:
        problems.append((f"{path}.redundancy.replicas", f"must be between 0 and {MAX_REPLICAS}"))
    if redundancy.select not in pipeline_pb2.Redundancy.Select.values():
        problems.append((f"{path}.redundancy.select", "must be SELECT_FIRST or SELECT_MAJORITY"))
    problems.extend(_duration_problem(redundancy.hedge_after, f"{path}.redundancy.hedge_after"))
    replicas = max(1, redundancy.replicas)
    majority = redundancy.select == pipeline_pb2.Redundancy.SELECT_MAJORITY
    if redundancy.HasField("hedge_after"):
        if replicas > 1:
            problems.append(
                (
                    f"{path}.redundancy.hedge_after",
                    "a hedge is the backup of a single attempt: use it with replicas 1, or drop it "
                    "and run the replicas at once",
                )
            )
        if majority:
            problems.append(
                (
                    f"{path}.redundancy.hedge_after",
                    "a hedge takes the first success: use it with select SELECT_FIRST",
                )
            )
        hedge = redundancy.hedge_after
        if hedge.seconds == 0 and hedge.nanos == 0:
            problems.append(
                (f"{path}.redundancy.hedge_after", "must be more than 0s (e.g. 30s), or unset for no hedge")
            )
    elif majority and redundancy.replicas < 2:
        problems.append(
            (f"{path}.redundancy.replicas", "SELECT_MAJORITY needs at least 2 replicas to compare (3 to outvote one)")
        )
    return problems


# Canonical encoding and digest ------------------------------------------------------------


def canonical_spec(spec: pipeline_pb2.PipelineSpec) -> bytes:
    """The canonical encoding of a spec: deterministic, key-sorted, compact proto3 JSON.

    Field names are those of the .proto (`default_value`, `step_output`); fields at their
    default are omitted, so adding a field to the contract keeps old digests stable.
    """
    as_dict = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    return json.dumps(as_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_digest(spec: pipeline_pb2.PipelineSpec) -> str:
    """The version digest of a spec: `sha256:<hex>` of its canonical encoding."""
    return "sha256:" + hashlib.sha256(canonical_spec(spec)).hexdigest()


# The DAG --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dag:
    """The step graph of a spec: an edge u → v when v reads an output of u or depends on u.

    Attributes:
        steps: Step names in spec order.
        upstream: For each step, the steps it waits for (spec order, no duplicates).
        downstream: For each step, the steps that wait for it (spec order).
    """

    steps: tuple[str, ...]
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_spec(cls, spec: pipeline_pb2.PipelineSpec) -> Dag:
        """Builds the DAG of a spec whose references are valid (see `validate_spec`)."""
        steps = tuple(step.name for step in spec.steps)
        known = set(steps)
        upstream: dict[str, tuple[str, ...]] = {}
        downstream_lists: dict[str, list[str]] = {name: [] for name in steps}
        for step in spec.steps:
            # dict keeps first-seen order and drops duplicate edges.
            ups: dict[str, None] = {}
            for item in step.inputs:
                if item.WhichOneof("source") == "step_output" and item.step_output.step in known:
                    ups[item.step_output.step] = None
            for name in step.depends_on:
                if name in known:
                    ups[name] = None
            ups.pop(step.name, None)
            upstream[step.name] = tuple(ups)
            for up in ups:
                downstream_lists[up].append(step.name)
        downstream = {name: tuple(children) for name, children in downstream_lists.items()}
        return cls(steps, upstream, downstream)

    def roots(self) -> list[str]:
        """Steps with no upstream step (ready as soon as the run starts), in spec order."""
        return [name for name in self.steps if not self.upstream[name]]

    def upstream_of(self, step: str) -> tuple[str, ...]:
        return self.upstream[step]

    def successors(self, step: str) -> tuple[str, ...]:
        return self.downstream[step]

    def ready_after(self, step: str, done: Iterable[str] | set[str]) -> list[str]:
        """Successors of `step` whose every upstream step is in `done` (which must hold `step`)."""
        finished = done if isinstance(done, set) else set(done)
        return [s for s in self.downstream[step] if all(u in finished for u in self.upstream[s])]

    def topological_order(self) -> list[str]:
        """Every step after all its upstream steps (Kahn's algorithm, spec order on ties).

        Raises:
            InvalidArgument: If the steps form a cycle.
        """
        order = self._kahn()
        if len(order) != len(self.steps):
            cycle = self.find_cycle()
            raise InvalidArgument(f"the steps form a cycle: {' -> '.join([*cycle, cycle[0]])}")
        return order

    def _kahn(self) -> list[str]:
        waiting = {name: len(self.upstream[name]) for name in self.steps}
        queue = deque(name for name in self.steps if waiting[name] == 0)
        order: list[str] = []
        while queue:
            name = queue.popleft()
            order.append(name)
            for child in self.downstream[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    queue.append(child)
        return order

    def find_cycle(self) -> list[str]:
        """The steps of one cycle in edge order (u before the v that waits for it), or []."""
        ordered = set(self._kahn())
        remaining = [name for name in self.steps if name not in ordered]
        if not remaining:
            return []
        # Every step left by Kahn's algorithm waits for another left step, so walking
        # upstream through left steps must revisit one: that stretch is a cycle.
        left = set(remaining)
        position: dict[str, int] = {}
        path: list[str] = []
        node = remaining[0]
        while node not in position:
            position[node] = len(path)
            path.append(node)
            node = next(u for u in self.upstream[node] if u in left)
        cycle = path[position[node] :]
        cycle.reverse()
        # Start the cycle at the step declared first, for a stable message.
        declared = {name: i for i, name in enumerate(self.steps)}
        first = min(range(len(cycle)), key=lambda i: declared[cycle[i]])
        return cycle[first:] + cycle[:first]
