"""A real S3-protocol server for tests: PyPI `moto[server]` as its own process on loopback.

`S3Server` starts `moto_server -H 127.0.0.1 -p PORT` (ready in ~2 s), makes buckets with a
plain `PUT /BUCKET`, and gives the environment that points obstore (in this process or in a
child: weft-api, weft-executor, a pod's helper containers) at it. It is the server, not a
fake of one: requests go over HTTP and moto answers them as S3 does (conditional puts,
multipart uploads, ranges, server-side copies).
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from weft.localstack import ChildProcess, free_port

#: Credentials moto accepts (any); named here so tests can check they never leak.
ACCESS_KEY_ID = "weft-test-access-key"
SECRET_ACCESS_KEY = "weft-test-secret-key-do-not-log"


def find_moto_server() -> str:
    """`moto_server` from the virtualenv `./dev setup` makes for it (`.venv/s3server`: moto's
    botocore cannot share an environment with the kubernetes client), beside this
    interpreter, or on PATH."""
    for beside in (
        Path(sys.executable).parent.parent / "s3server" / "bin" / "moto_server",
        Path(sys.executable).parent / "moto_server",
    ):
        if beside.exists():
            return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError("moto_server is not installed: ./dev setup puts it in .venv/s3server")
    return found


class S3Server:
    """moto's S3 server on a free loopback port (see the module docstring)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.child = ChildProcess([find_moto_server(), "-H", "127.0.0.1", "-p", str(self.port)], log_path)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"moto_server exited at start:\n{self.child.tail()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers: up
            except OSError:
                time.sleep(0.1)
        self.child.stop()
        raise TimeoutError(f"moto_server did not answer within {timeout}s:\n{self.child.tail()}")

    def stop(self) -> None:
        self.child.stop()

    def make_bucket(self, name: str = "") -> str:
        """Creates a bucket (a fresh name by default) and returns its name."""
        name = name or f"weft-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return name

    def environ(self) -> dict[str, str]:
        """What obstore reads to reach this server (the standard AWS variables)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


#: Recomputes presigned URLs' signatures with botocore (AWS's own SigV4 signer), run in the
#: S3 server's virtualenv: moto checks the signatures of `Authorization` headers but not of
#: presigned query strings, nor their expiry, so this is how the tests learn whether S3
#: would accept a URL for a given method, key and lifetime.
_SIGV4_CHECK = """
import json, sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
body = json.loads(sys.stdin.read())
answers = []
for method, url in body["requests"]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    given = query.pop("X-Amz-Signature")
    region = query["X-Amz-Credential"].split("/")[2]
    auth = S3SigV4QueryAuth(Credentials(body["key"], body["secret"]), "s3", region, expires=int(query["X-Amz-Expires"]))
    request = AWSRequest(method=method, url=urlunsplit(parts._replace(query=urlencode(query))))
    request.context["timestamp"] = query["X-Amz-Date"]
    canonical = auth.canonical_request(request)
    answers.append(auth.signature(auth.string_to_sign(request, canonical), request) == given)
print(json.dumps(answers))
"""


def signatures_valid(requests: list[tuple[str, str]]) -> list[bool]:
    """For each (method, presigned URL), whether its signature is the one S3 expects for that
    method on that URL's key with its stated date and lifetime (checked by botocore)."""
    import json
    import subprocess

    python = Path(find_moto_server()).parent / "python"
    body = json.dumps({"key": ACCESS_KEY_ID, "secret": SECRET_ACCESS_KEY, "requests": requests})
    done = subprocess.run([str(python), "-c", _SIGV4_CHECK], input=body, capture_output=True, text=True, check=True)
    answers: list[bool] = json.loads(done.stdout)
    return answers


_SIGV4_HEADER_CHECK = """
import json, sys
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
body = json.loads(sys.stdin.read())
headers = body["headers"]
unsigned = {k: v for k, v in headers.items() if k != "authorization"}
request = AWSRequest(method=body["method"], url=body["url"], headers=unsigned)
request.context["timestamp"] = headers["x-amz-date"]
auth = S3SigV4Auth(Credentials(body["key"], body["secret"], body.get("token") or None), "s3", body["region"])
canonical = auth.canonical_request(request)
print(json.dumps(auth.signature(auth.string_to_sign(request, canonical), request)))
"""


def expected_header_signature(method: str, url: str, headers: dict[str, str], region: str, token: str = "") -> str:
    """The SigV4 signature botocore (AWS's own signer) computes for a request signed with
    an `Authorization` header: what S3 compares that header's `Signature=` with."""
    import json
    import subprocess

    python = Path(find_moto_server()).parent / "python"
    body = json.dumps(
        {"method": method, "url": url, "headers": headers, "region": region, "token": token,
         "key": ACCESS_KEY_ID, "secret": SECRET_ACCESS_KEY}
    )  # fmt: skip
    done = subprocess.run(
        [str(python), "-c", _SIGV4_HEADER_CHECK], input=body, capture_output=True, text=True, check=True
    )
    signature: str = json.loads(done.stdout)
    return signature
