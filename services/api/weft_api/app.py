"""Wiring of weft-api: one etcd store, one blob store, three services, one gRPC server.

`create_api_server(config)` is what `weft-api` runs and what the tests start on port 0.
The api holds no state of its own beyond caches of immutable data (specs by digest), so
any number of replicas can serve the same etcd and blob store (invariant 5).
"""

from __future__ import annotations

from weft.v1 import artifact_pb2, artifact_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc
from weft_api.access import API_RULES
from weft_api.artifacts import ArtifactService, BlobReferences
from weft_api.lineage_sweep import LineageSweep
from weft_api.pipelines import PipelineService
from weft_api.runs import RunService
from weft_core.auth import load_auth
from weft_core.config import ApiConfig
from weft_core.keyspace import Keyspace
from weft_core.objectstore import open_blob_store
from weft_core.pipelines import PipelineReader
from weft_core.requests import RequestIdLeases
from weft_core.server import ServiceBinding, WeftServer, create_server
from weft_core.store import Store
from weft_core.tls import etcd_tls_of, peer_of, server_tls_of

PIPELINE_SERVICE = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
RUN_SERVICE = run_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
ARTIFACT_SERVICE = artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name


def create_api_server(config: ApiConfig) -> tuple[WeftServer, int]:
    """Builds weft-api bound to `config.listen` (call from a running event loop).

    The server is bound, not started: `await server.start()`. Stopping it closes the
    etcd connection.

    Returns:
        The server and the port it is bound to.

    Raises:
        ValueError: A token, roles or TLS file of the config is missing or malformed.
    """
    # Security first: a bad token or certificate file must stop the start, not the first call.
    auth = load_auth(config.auth_tokens_file, config.auth_kube_roles_file, config.auth_kubeconfig)
    tls = server_tls_of(config)
    store = Store(config.etcd_endpoints, tls=etcd_tls_of(config))
    keyspace = Keyspace(config.etcd_root)
    # A directory, or object storage that every api replica and executor reaches directly.
    blobs = open_blob_store(config.blob_store_url)
    reader = PipelineReader(store, keyspace, blobs)
    request_ids = RequestIdLeases(store)  # one lease grant an hour serves both services
    services = [
        ServiceBinding(
            PIPELINE_SERVICE,
            PipelineService(
                store,
                keyspace,
                blobs,
                reader,
                request_ids,
                relaxed_security_namespaces=config.relaxed_security_namespaces,
            ),
            pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        ),
        ServiceBinding(
            RUN_SERVICE,
            RunService(store, keyspace, blobs, reader, request_ids, peer=peer_of(config)),
            run_pb2_grpc.add_RunServiceServicer_to_server,
        ),
        ServiceBinding(
            ARTIFACT_SERVICE,
            ArtifactService(blobs, BlobReferences(store, keyspace) if auth is not None else None),
            artifact_pb2_grpc.add_ArtifactServiceServicer_to_server,
        ),
    ]
    server, port = create_server(
        config.listen, services, auth=auth.with_rules(API_RULES) if auth is not None else None, tls=tls
    )
    server.follow_readiness(store.reachable)  # NOT_SERVING while etcd is unreachable
    server.on_stop(store.close)
    if config.lineage_sweep_interval > 0:
        # Outcomes an executor committed but did not index (weft_api/lineage_sweep.py);
        # registered after the store's close, so it stops first (clean-ups run in reverse).
        sweep = LineageSweep(store, keyspace, blobs, interval=config.lineage_sweep_interval)
        sweep.start()
        server.on_stop(sweep.stop)
    return server, port
