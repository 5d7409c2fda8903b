"""Replicas of a redundant step on the kubernetes runtime: one pod per replica, spread by a
soft pod anti-affinity, the losers' pods deleted once another replica won."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.executor.support import Harness, steps_by_name
from tests.integration.kube.conftest import kube_executor_settings, list_pods, wait_until
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.v1 import run_pb2
from weft_executor.runtime.kube_pods import LABEL_ATTEMPT, LABEL_REPLICA, LABEL_RUN, LABEL_STEP

pytestmark = pytest.mark.kube

Run = run_pb2.Run


async def test_replicas_run_in_pods_apart_and_the_losers_pods_are_deleted(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    h = harness
    script = '[ "$WEFT_REPLICA" = 2 ] || sleep 60; printf "$WEFT_REPLICA" > "$WEFT_OUTPUTS/out"'
    race = h.step("race", script)
    race.redundancy.replicas = 3
    pipeline = await h.apply("kube-race", [race])
    for _ in range(2):
        await h.start_executor(**kube_executor_settings(cluster, namespace, max_parallel=4))
    run = await h.run(pipeline.name)

    pods = await wait_until(
        lambda: len(list_pods(core, namespace)) == 3 and list_pods(core, namespace),
        timeout=60,
        what="a pod per replica",
    )
    for pod in pods:
        labels = pod.metadata.labels
        assert labels[LABEL_STEP] == "race"
        terms = pod.spec.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution
        assert len(terms) == 1
        assert terms[0].pod_affinity_term.topology_key == "kubernetes.io/hostname"
        selector = terms[0].pod_affinity_term.label_selector.match_labels
        assert selector[LABEL_RUN] == labels[LABEL_RUN]
        assert selector[LABEL_ATTEMPT] == "1"
    assert sorted(p.metadata.labels[LABEL_REPLICA] for p in pods) == ["1", "2", "3"]

    ended = await h.wait(run.name, timeout=90)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    outcome = steps_by_name(ended)["race"].outcome
    assert outcome.replica == 2
    # The winner's resolved image digest is the outcome's, as for a plain commit.
    winner = next(a for a in outcome.replicas if a.replica == 2)
    assert winner.image_id
    assert outcome.image_id == winner.image_id
    assert h.launches() == {"race": 3}
    loser_pods = {a.handle for a in outcome.replicas if a.replica != 2}
    assert len(loser_pods) == 2
    await wait_until(lambda: list_pods(core, namespace) == [], timeout=30, what="every replica's pod deleted")
