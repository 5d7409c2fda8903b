"""Incomplete multipart uploads on S3: listing and aborting those a crashed writer left.

A writer killed in the middle of a multipart upload leaves parts that S3 keeps (and bills)
but never lists as objects. obstore (the Rust `object_store` crate) has no request to list
them, so this module makes the two S3 requests the sweep needs itself:
`ListMultipartUploads` (`GET /?uploads&prefix=…`) and `AbortMultipartUpload`
(`DELETE /KEY?uploadId=…`), signed with AWS Signature Version 4 from the standard
variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`).
Credentials that only an identity service hands out (IRSA, instance metadata) are not
read here: without keys in the environment, `S3Uploads.from_environment` says why and the
bucket's `AbortIncompleteMultipartUpload` lifecycle rule stays the remedy.

It never logs or returns a credential, and it touches only keys under the blob store's
prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Seconds one request may take.
REQUEST_TIMEOUT = 30.0


class S3RequestError(Exception):
    """S3 refused or did not answer a request; the message says which and why."""


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class S3Uploads:
    """The multipart uploads of one bucket, as the sweep sees them (see the module docstring).

    Attributes:
        endpoint: `scheme://host[:port]` of the S3 API.
        bucket: The bucket.
        region: The signing region.
        virtual_hosted: The bucket is addressed as a host name (AWS), not as the path's first
            segment (MinIO, moto, and most S3-compatible servers).
    """

    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str = ""
    virtual_hosted: bool = False

    def __repr__(self) -> str:  # never show the keys
        return f"S3Uploads(endpoint={self.endpoint!r}, bucket={self.bucket!r}, region={self.region!r})"

    @classmethod
    def from_environment(cls, bucket: str, environ: Mapping[str, str] | None = None) -> S3Uploads | str:
        """The client for `bucket`, or why there is none (no static credentials)."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        if not key or not secret:
            return (
                "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment (workload identity is not read "
                "for this request): rely on the bucket's AbortIncompleteMultipartUpload lifecycle rule"
            )
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = (env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or "").rstrip("/")
        virtual = env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in ("1", "true")
        if not endpoint:
            endpoint, virtual = f"https://s3.{region}.amazonaws.com", True
        return cls(endpoint, bucket, region, key, secret, env.get("AWS_SESSION_TOKEN", ""), virtual)

    # Signing ---------------------------------------------------------------------------

    def _host_and_path(self, key: str) -> tuple[str, str]:
        parts = urlsplit(self.endpoint)
        host = parts.netloc
        if self.virtual_hosted:
            return f"{self.bucket}.{host}", "/" + key
        return host, f"/{self.bucket}/{key}" if key else f"/{self.bucket}/"

    def signed_headers(
        self, method: str, key: str, query: Mapping[str, str], now: datetime
    ) -> tuple[str, dict[str, str]]:
        """(URL, headers) of a request signed with SigV4 (no body)."""
        host, path = self._host_and_path(key)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": stamp}
        if self.session_token:
            headers["x-amz-security-token"] = self.session_token
        canonical_uri = _uri_encode(path, keep_slash=True)
        canonical_query = "&".join(
            f"{_uri_encode(k, keep_slash=False)}={_uri_encode(v, keep_slash=False)}" for k, v in sorted(query.items())
        )
        names = sorted(headers)
        canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
        signed = ";".join(names)
        canonical = "\n".join((method, canonical_uri, canonical_query, canonical_headers, signed, _EMPTY_SHA256))
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()))
        signing_key = _hmac(_hmac(_hmac(_hmac(("AWS4" + self.secret_access_key).encode(), day), self.region), "s3"),
                            "aws4_request")  # fmt: skip
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        scheme = urlsplit(self.endpoint).scheme
        url = f"{scheme}://{host}{canonical_uri}" + (f"?{canonical_query}" if canonical_query else "")
        return url, headers

    async def _request(self, method: str, key: str, query: Mapping[str, str]) -> bytes:
        url, headers = self.signed_headers(method, key, query, datetime.now(UTC))
        del headers["host"]  # urllib sets it, the same

        def send() -> bytes:
            request = urllib.request.Request(url, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                    body: bytes = response.read()
                    return body
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode("utf-8", "replace")
                raise S3RequestError(f"{method} {key or '/'}: HTTP {error.code} {detail}") from None
            except OSError as error:
                raise S3RequestError(f"{method} {key or '/'}: {error}") from None

        return await asyncio.to_thread(send)

    # The two requests ------------------------------------------------------------------

    async def list_incomplete(self, prefix: str) -> list[IncompleteUpload]:
        """Every incomplete multipart upload of a key under `prefix` (all pages)."""
        found: list[IncompleteUpload] = []
        markers: dict[str, str] = {}
        while True:
            body = await self._request("GET", "", {"uploads": "", "prefix": prefix, **markers})
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError as error:
                raise S3RequestError(f"ListMultipartUploads answered with something other than XML ({error})") from None
            for upload in root.iter(f"{_NS}Upload"):
                initiated = (upload.findtext(f"{_NS}Initiated") or "").replace("Z", "+00:00")
                found.append(
                    IncompleteUpload(
                        key=upload.findtext(f"{_NS}Key") or "",
                        upload_id=upload.findtext(f"{_NS}UploadId") or "",
                        initiated=datetime.fromisoformat(initiated),
                    )
                )
            if (root.findtext(f"{_NS}IsTruncated") or "").lower() != "true":
                return found
            markers = {
                "key-marker": root.findtext(f"{_NS}NextKeyMarker") or "",
                "upload-id-marker": root.findtext(f"{_NS}NextUploadIdMarker") or "",
            }

    async def abort(self, upload: IncompleteUpload) -> None:
        """Aborts one upload: S3 deletes its parts."""
        await self._request("DELETE", upload.key, {"uploadId": upload.upload_id})
