"""`helm test`: a two-step pipeline runs through weft-api and the executors, and its output is right.

Runs in weft's image (the SDK is installed there) with WEFT_API (host:port of weft-api) and
WEFT_TEST_IMAGE (the image of the two steps: any image with /bin/sh); with the chart's auth
and TLS on, also WEFT_TOKEN (the SDK reads it) and WEFT_CA_CERT (the release's CA). Exits 0 when the run
SUCCEEDED with the expected output, 1 otherwise, saying why. tests/e2e/test_operations.py
runs this same file against a local stack.
"""

import os
import sys
import uuid

import weft

api = os.environ["WEFT_API"]
image = os.environ.get("WEFT_TEST_IMAGE", "weft")
ca_cert = os.environ.get("WEFT_CA_CERT") or None
word = uuid.uuid4().hex[:8]

pipeline = weft.Pipeline("helm-test", parameters={"word": "x"})
greet = pipeline.step(
    "greet",
    image=image,
    command=["sh", "-c", 'printf "hello %s" "$(cat $WEFT_INPUTS/word)" > $WEFT_OUTPUTS/greeting'],
    inputs={"word": pipeline.param("word")},
    outputs=["greeting"],
)
pipeline.step(
    "shout",
    image=image,
    command=["sh", "-c", "tr a-z A-Z < $WEFT_INPUTS/greeting > $WEFT_OUTPUTS/loud"],
    inputs={"greeting": greet.output("greeting")},
    outputs=["loud"],
)

with weft.Client.connect(api, namespace="weft-helm-test", ca_cert=ca_cert) as client:
    client.wait_ready(timeout=30)
    client.apply(pipeline)
    run = client.create_run("helm-test", {"word": word}).wait(timeout=300)
    if run.state != "SUCCEEDED":
        print(f"run {run.name} is {run.state}: {run.message}", file=sys.stderr)
        sys.exit(1)
    loud = run.outputs("shout")["shout"]["loud"]
    if loud != f"HELLO {word.upper()}".encode():
        print(f"run {run.name}: step shout wrote {loud!r}, expected HELLO {word.upper()}", file=sys.stderr)
        sys.exit(1)
    print(f"run {run.name} SUCCEEDED: {loud.decode()}")
