"""Kubernetes ServiceAccount tokens checked by the real kube-apiserver's TokenReview API
(tests/kube), mapped to weft roles by user name and group."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.api.support import Clients
from tests.integration.conftest import InProcessApi, running_api
from tests.kube.cluster import KubeCluster, require_kube, start_cluster
from tests.support import assert_eventually_async
from weft._auth import open_channel
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.auth import Role, TokenReview
from weft_core.keyspace import Keyspace

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]

ROLES = """
bindings:
  - user: system:serviceaccount:default:builder
    roles: {team-a: runner}
  - group: system:serviceaccounts:ops
    roles: {"*": viewer}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    require_kube()
    with start_cluster() as running:
        yield running


def service_account_token(cluster: KubeCluster, namespace: str, name: str) -> str:
    """A bound token of a (new) ServiceAccount, from the TokenRequest API."""
    from kubernetes import client

    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        if namespace != "default":
            try:
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            except client.ApiException as error:
                if error.status != 409:
                    raise
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        answer: Any = core.create_namespaced_service_account_token(name, namespace, request)
        return str(answer.status.token)


@pytest.fixture
async def kube_api(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, cluster: KubeCluster
) -> AsyncIterator[InProcessApi]:
    roles = tmp_path / "kube-roles.yaml"
    roles.write_text(ROLES)
    async with running_api(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        auth_kube_roles_file=roles,
        auth_kubeconfig=cluster.kubeconfig_path,
    ) as api:
        yield api


async def test_service_account_tokens_get_the_roles_of_their_user_and_groups(
    kube_api: InProcessApi, cluster: KubeCluster
) -> None:
    builder = service_account_token(cluster, "default", "builder")
    auditor = service_account_token(cluster, "ops", "auditor")
    stranger = service_account_token(cluster, "default", "stranger")
    listing = run_pb2.ListRunsRequest(parent="namespaces/team-a")
    async with open_channel(kube_api.address, token=builder) as channel:
        await Clients.of(channel).runs.ListRuns(listing)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await Clients.of(channel).runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/team-b"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "system:serviceaccount:default:builder" in (denied.value.details() or "")
    async with open_channel(kube_api.address, token=auditor) as channel:
        await Clients.of(channel).runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/anything"))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await Clients.of(channel).runs.CancelRun(run_pb2.CancelRunRequest(name="namespaces/team-a/runs/r"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Authenticated by Kubernetes, but bound to no role: as good as unknown.
    for token in (stranger, builder[:-4] + "AAAA", "not-a-jwt"):
        async with open_channel(kube_api.address, token=token) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await Clients.of(channel).runs.ListRuns(listing)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_deleted_service_accounts_token_stops_working(cluster: KubeCluster, tmp_path: Path) -> None:
    from kubernetes import client

    roles = tmp_path / "kube-roles.yaml"
    roles.write_text(ROLES)
    review = TokenReview(roles, cluster.kubeconfig_path, ttl=0)
    token = service_account_token(cluster, "ops", "leaving")
    principal = await review.lookup(token)
    assert principal is not None
    assert principal.subject == "system:serviceaccount:ops:leaving"
    assert principal.role_in("team-z") == Role.VIEWER
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).delete_namespaced_service_account("leaving", "ops")

    async def rejected() -> bool:
        return await review.lookup(token) is None

    # The apiserver looks the account up through its own informer cache: shortly, not at once.
    await assert_eventually_async(rejected, timeout=30, what="the deleted account's token is rejected")
