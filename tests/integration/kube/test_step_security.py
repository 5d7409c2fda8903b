"""Step pods are hardened: checked on the pod the real kube-apiserver stored, for a default
step (non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp, no
ServiceAccount token) and for a step that asked for each relaxation; and a pod's helper
containers reach a weft-api with auth on through a token only they can see."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.support import Clients
from tests.integration.conftest import InProcessApi, running_api
from tests.integration.kube.conftest import settings_for
from tests.integration.kube.test_kubernetes_runtime import attempt_spec, run_attempt
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft._auth import open_channel
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2
from weft_core.auth import render_token_file
from weft_core.blobs import RemoteBlobStore, blob_namespace
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_core.tls import Peer
from weft_executor.runtime.kube_client import KubeApi
from weft_executor.runtime.kube_pods import STEP_UID
from weft_executor.runtime.kubernetes import KubernetesRuntime, claims_in_etcd

pytestmark = pytest.mark.kube
Attempt = run_pb2.Attempt


def hardened(container: Any) -> None:
    context = container.security_context
    assert context.allow_privilege_escalation is False, container.name
    assert context.capabilities.drop == ["ALL"], container.name
    assert context.privileged is not True, container.name


async def test_a_step_pod_is_hardened_by_default(
    runtime: KubernetesRuntime, api: InProcessApi, core: Any, namespace: str
) -> None:
    spec = attempt_spec("plain", 'id -u > "$WEFT_OUTPUTS/out"')
    attempt, result = await run_attempt(runtime, spec)
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    pod = core.read_namespaced_pod(attempt.handle, namespace)
    assert pod.spec.automount_service_account_token is False
    pod_context = pod.spec.security_context
    assert pod_context.run_as_non_root is True
    assert (pod_context.run_as_user, pod_context.run_as_group, pod_context.fs_group) == (STEP_UID,) * 3
    assert pod_context.seccomp_profile.type == "RuntimeDefault"
    containers = [*pod.spec.init_containers, *pod.spec.containers]
    assert len(containers) == 3
    for container in containers:
        hardened(container)
        assert container.security_context.run_as_non_root is True
        assert container.security_context.capabilities.add is None
    await runtime.release(attempt)


async def test_a_step_that_asks_gets_exactly_the_relaxations_it_asked_for(
    runtime: KubernetesRuntime, api: InProcessApi, core: Any, namespace: str
) -> None:
    spec = attempt_spec("relaxed", 'printf x > "$WEFT_OUTPUTS/out"')
    spec.security.CopyFrom(
        pipeline_pb2.StepSecurity(
            run_as_root=True, mount_service_account_token=True, add_capabilities=["NET_BIND_SERVICE"]
        )
    )
    attempt, result = await run_attempt(runtime, spec)
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    pod = core.read_namespaced_pod(attempt.handle, namespace)
    assert pod.spec.automount_service_account_token is True
    assert pod.spec.security_context.run_as_user == 0
    assert pod.spec.security_context.run_as_non_root is None
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    main = next(c for c in pod.spec.containers if c.name == "main")
    hardened(main)
    assert main.security_context.capabilities.add == ["NET_BIND_SERVICE"]
    # weft's own helper containers stay unprivileged in the step's relaxed pod.
    for helper in [*pod.spec.init_containers, *(c for c in pod.spec.containers if c.name != "main")]:
        hardened(helper)
        assert helper.security_context.run_as_user == STEP_UID
        assert helper.security_context.capabilities.add is None
    await runtime.release(attempt)


async def test_a_pods_helpers_reach_an_api_with_auth_on_with_their_own_token(
    cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str, etcd: EtcdProcess, tmp_path: Path
) -> None:
    from kubernetes import client

    executor_token, helper_token, viewer_token = (secrets.token_urlsafe(24) for _ in range(3))
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        render_token_file(
            [
                ("executor", executor_token, {"*": "admin"}),
                ("step-pods", helper_token, {"*": "runner"}),
                ("viewer", viewer_token, {"team-k": "viewer"}),
            ]
        )
    )
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="weft-pods-token"), string_data={"token": helper_token})
    core.create_namespaced_secret(namespace, secret)
    keyspace = Keyspace(f"/pods-auth-{namespace}")
    async with running_api(etcd.endpoint, keyspace, tmp_path / "blobs", auth_tokens_file=tokens) as api:
        config = settings_for(namespace, api, pod_api_token_secret="weft-pods-token")
        blobs = RemoteBlobStore(api.address, peer=Peer(executor_token))
        store = Store(etcd.endpoint)
        runtime = KubernetesRuntime(
            KubeApi(cluster.configuration(), qps=50, burst=100), blobs, config, claims_in_etcd(store, keyspace)
        )
        try:
            context = blob_namespace.set("team-k")
            seed = (await blobs.put(b"21")).digest
            blob_namespace.reset(context)
            spec = attempt_spec(
                "double",
                'echo $(( $(cat "$WEFT_INPUTS/seed") * 2 )) > "$WEFT_OUTPUTS/out"; env > "$WEFT_OUTPUTS/env"',
                namespace="team-k",
                inputs={"seed": seed},
                outputs=("out", "env"),
            )
            attempt, result = await run_attempt(runtime, spec)
            assert result.state == Attempt.STATE_SUCCEEDED, result.message
            pod = core.read_namespaced_pod(attempt.handle, namespace)
            main = next(c for c in pod.spec.containers if c.name == "main")
            assert all(e.name != "WEFT_PEER_TOKEN" for e in main.env or [])
            # The outputs were uploaded for team-k, so team-k's viewer reads them.
            async with open_channel(api.address, token=viewer_token) as channel:
                request = artifact_pb2.GetBlobRequest(digest=result.output_digests["out"], namespace="team-k")
                chunks = Clients.of(channel).artifacts.GetBlob(request)
                assert b"".join([c.data async for c in chunks]) == b"42\n"
                request.digest = result.output_digests["env"]
                environment = b"".join([c.data async for c in Clients.of(channel).artifacts.GetBlob(request)])
            assert helper_token.encode() not in environment
            await runtime.release(attempt)
        finally:
            await runtime.close()
            await blobs.close()
            await store.close()
