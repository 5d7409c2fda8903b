"""weft-tracer: collects the OpenTelemetry spans of runs for timelines and forensic replay.

It receives OTLP/gRPC from any exporter (weft's services and the code inside steps),
keeps the spans in a SQLite store (`store`), forwards them to Jaeger or a collector when
configured (`forward`), and serves `weft.v1.TraceService` (`service`): a run's span tree,
its forensic timeline built from the spans and the run's etcd history (`timeline`), and
a replay of that timeline. It never writes etcd.
"""
