"""The image digest a step ran as on Kubernetes: recorded, explained, attested.

The simulated kubelet (tests.kube.kubelet) reports each container's `imageID` as a pull
of its image reference would (`repo@sha256:…`); a test moves a tag by changing what the
reference resolves to. The step runs for real (run_locally), through weft-executor with
the kubernetes runtime, a real weft-api and the test control plane.

What is deliberately not here: a moved tag does not make a cache miss. The digest is
known only after a pod pulled the image, and the cache decision comes before any pod,
so an outcome reused for a tag never finds out (weft has no registry client to ask);
the run after a REFRESH (or any miss) records the new digest and says it moved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.executor.support import Harness, steps_by_name
from tests.integration.executor.test_slsa import assert_slsa_shape
from tests.integration.kube.conftest import kube_executor_settings
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft import _provenance as slsa
from weft.v1 import run_pb2

pytestmark = pytest.mark.kube

IMAGE = "busybox:1.36"  # the image of the harness's steps
BEFORE, AFTER = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32


@pytest.fixture
def tag_resolution(kubelet: SimulatedKubelet) -> Iterator[dict[str, str]]:
    """What the kubelet resolves image references to, reset after the test (the kubelet
    is shared by the module)."""
    kubelet.image_digests[IMAGE] = BEFORE
    try:
        yield kubelet.image_digests
    finally:
        kubelet.image_digests.pop(IMAGE, None)


async def test_the_resolved_image_digest_is_recorded_explained_diffed_and_attested(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, namespace: str, tag_resolution: Any
) -> None:
    h = harness
    pipeline = await h.apply("tagged", [h.step("only")])
    await h.start_executor(**kube_executor_settings(cluster, namespace))
    first = await h.wait((await h.run(pipeline.name)).name, timeout=60)
    tag_resolution[IMAGE] = AFTER  # the tag moves on the registry
    reused = await h.wait((await h.run(pipeline.name)).name, timeout=60)
    refreshed = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_REFRESH)).name, timeout=60)

    assert [r.state for r in (first, reused, refreshed)] == [run_pb2.Run.STATE_SUCCEEDED] * 3
    ran_first, ran_again = steps_by_name(first)["only"], steps_by_name(refreshed)["only"]
    assert ran_first.attempts[0].image_id == f"busybox@{BEFORE}"
    assert ran_first.outcome.image_id == f"busybox@{BEFORE}"
    # The honest limit: the cache decision cannot see the moved tag (no pod ran to pull it).
    assert steps_by_name(reused)["only"].state == run_pb2.StepRun.STATE_CACHED
    assert ran_again.outcome.image_id == f"busybox@{AFTER}"
    assert ran_again.outcome.dna == ran_first.outcome.dna

    explained = await h.explain(refreshed.name, "only")
    assert explained.reason.endswith(f"; image tag {IMAGE} now resolves to {AFTER}, was {BEFORE}")
    assert explained.compared_outcome.image_id == f"busybox@{BEFORE}"
    diff = await h.clients.runs.DiffRuns(run_pb2.DiffRunsRequest(run_a=first.name, run_b=refreshed.name))
    only = next(d for d in diff.steps if d.step == "only")
    assert only.kind == run_pb2.StepDiff.KIND_SAME  # same outputs: the new image changed nothing here
    assert only.message == f"image tag {IMAGE} now resolves to {AFTER}, was {BEFORE}"

    statement = json.loads(json.dumps(slsa.slsa_statement(await h.get(refreshed.name))))
    assert_slsa_shape(statement)
    image = next(
        d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"] if d["name"] == "only/image"
    )
    assert image == {"name": "only/image", "uri": "pkg:docker/busybox@1.36", "digest": {"sha256": AFTER[7:]}}
    attempt = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "only/attempt")
    assert attempt["annotations"]["weft_imageId"] == f"busybox@{AFTER}"
