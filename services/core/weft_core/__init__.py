"""Code shared by weft-api, weft-executor and weft-tracer.

The etcd keyspace and store, the gRPC server bootstrap, error translation, telemetry and
DNA hashing live here so the services agree on them. The SDK never imports this package;
this package may import the SDK's generated `weft.v1` messages.
"""
