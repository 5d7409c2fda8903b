"""A gRPC health probe: `python -m weft_core.healthcheck --addr HOST:PORT [--service NAME] [--ca-cert CA]`.

Exits 0 when the standard health service answers SERVING, 1 otherwise (not serving,
unreachable, timeout), printing one line that says which. The Helm chart uses it as the
exec probe of every weft service, since Kubernetes 1.20 has no native gRPC probe (and no
Kubernetes probes gRPC over TLS); with `--ca-cert` it speaks TLS, trusting that CA. Health
needs no token. It only reads the health status; it never changes anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(addr: str, service: str = "", timeout: float = 3.0, ca_cert: str = "") -> tuple[bool, str]:
    """Asks the health service at `addr` about `service` ("" is the whole server).

    Returns:
        (serving, one line describing the answer).
    """
    try:
        channel = (
            grpc.secure_channel(addr, grpc.ssl_channel_credentials(Path(ca_cert).read_bytes()))
            if ca_cert
            else grpc.insecure_channel(addr)
        )
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        name = code.name if code else "ERROR"
        return False, f"{addr} {service or '(server)'}: {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{addr} {service or '(server)'}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weft_core.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument("--service", default="", help="service to check, e.g. weft.v1.RunService (default: server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--ca-cert", default="", help="PEM CA of the server's certificate: check over TLS")
    args = parser.parse_args(argv)
    serving, line = check(args.addr, args.service, args.timeout, args.ca_cert)
    print(line, flush=True)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
