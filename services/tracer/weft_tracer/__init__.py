"""weft-tracer: collects the OpenTelemetry spans of runs for timelines and forensic replay.

Not built yet: until it is, services export OTLP straight to any endpoint given in
OTEL_EXPORTER_OTLP_ENDPOINT (a Jaeger collector, for instance).
"""
