"""Where File outputs go: an S3-compatible bucket, or inline as base64; and final outputs over the result cap.

The bucket is runpod's three variables: ``BUCKET_ENDPOINT_URL`` (``http(s)://host[:port]/BUCKET``, the bucket
being the first path segment; any further segments prefix the object keys), ``BUCKET_ACCESS_KEY_ID`` and
``BUCKET_SECRET_ACCESS_KEY``; ``BUCKET_REGION`` optionally (else read from an ``s3.REGION.amazonaws.com`` host, else
``us-east-1``) and ``HANDLER_SDK_BUCKET_URL_EXPIRES_S`` (default 7 days, SigV4's maximum). Objects are named
``[prefix/]JOB_ID/RANDOM-NAME``. Uploads run with boto3 (the ``files`` extra) in a thread, never on the event loop.

Everything here runs only when an output holds a File or is over the cap: the runner's fast path never calls in.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import codec
from .errors import FileError, OutputTooLarge
from .outputs import File

__all__ = ["Bucket", "bucket_from_env", "has_files", "offload", "resolve"]

_AWS_HOST = re.compile(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com$")
_WEEK_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Bucket:
    endpoint: str  # scheme://host[:port], what boto3 calls endpoint_url
    name: str
    prefix: str  # "" or "a/b/"
    access_key: str | None
    secret_key: str | None
    region: str
    url_expires_s: int


def bucket_from_env(env: Mapping[str, str] | None = None) -> Bucket | None:
    """The bucket the BUCKET_* variables name, or None when ``BUCKET_ENDPOINT_URL`` is unset."""
    env = os.environ if env is None else env
    url = env.get("BUCKET_ENDPOINT_URL", "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme not in ("http", "https") or not parts.netloc or not segments:
        raise FileError(f"BUCKET_ENDPOINT_URL={url!r} must be http(s)://host[:port]/BUCKET")
    region = env.get("BUCKET_REGION") or ((m := _AWS_HOST.search(parts.hostname or "")) and m.group(1)) or "us-east-1"
    try:
        expires = int(env.get("HANDLER_SDK_BUCKET_URL_EXPIRES_S") or _WEEK_S)
    except ValueError:
        raise FileError("HANDLER_SDK_BUCKET_URL_EXPIRES_S must be a whole number of seconds") from None
    return Bucket(
        endpoint=f"{parts.scheme}://{parts.netloc}", name=segments[0],
        prefix="".join(s + "/" for s in segments[1:]), access_key=env.get("BUCKET_ACCESS_KEY_ID") or None,
        secret_key=env.get("BUCKET_SECRET_ACCESS_KEY") or None, region=region, url_expires_s=expires,
    )  # fmt: skip


# --- finding Files in an output ------------------------------------------------------------------------------


def has_files(value: Any) -> bool:
    if isinstance(value, File):
        return True
    if isinstance(value, dict):
        return any(has_files(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_files(v) for v in value)
    return False


def _collect(value: Any, into: list[File]) -> None:
    if isinstance(value, File):
        into.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, into)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, into)


def _replace(value: Any, done: dict[int, dict[str, Any]]) -> Any:
    if isinstance(value, File):
        return done[id(value)]
    if isinstance(value, dict):
        return {k: _replace(v, done) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v, done) for v in value]
    return value


async def resolve(value: Any, job_id: str, limit: int) -> Any:
    """``value`` with every File replaced by its bucket reference, or (with no bucket) its inlined bytes. An inlined
    file whose base64 alone is over ``limit`` fails with a FileError that names BUCKET_ENDPOINT_URL."""
    files: list[File] = []
    _collect(value, files)
    bucket = bucket_from_env()
    done: dict[int, dict[str, Any]] = {}
    for f in files:
        if id(f) not in done:
            done[id(f)] = await asyncio.to_thread(_upload_file if bucket else _inline, f, bucket, job_id, limit)
    return _replace(value, done)


def _size(f: File) -> int:
    try:
        return f.size()
    except OSError as e:
        raise FileError(f"File output {f.name!r}: {e.strerror or e}: {e.filename or ''}") from None


def _inline(f: File, bucket: Bucket | None, job_id: str, limit: int) -> dict[str, Any]:
    n = _size(f)
    encoded = 4 * ((n + 2) // 3)
    if encoded > limit:
        raise FileError(
            f"File output {f.name!r} is {n} bytes ({encoded} as base64), over the {limit}-byte limit for inlined "
            "files; set BUCKET_ENDPOINT_URL (with BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY) to upload it"
        )
    try:
        data = f.read()
    except OSError as e:
        raise FileError(f"File output {f.name!r}: {e.strerror or e}: {e.filename or ''}") from None
    return {"content_type": f.content_type, "data_base64": base64.b64encode(data).decode()}


def _upload_file(f: File, bucket: Bucket | None, job_id: str, limit: int) -> dict[str, Any]:
    assert bucket is not None
    n = _size(f)
    return _upload(bucket, job_id, name=f.name, content_type=f.content_type, source=f.source, size=n)


async def offload(data: bytes, job_id: str, cap: int, what: str = "output") -> bytes:
    """A final output over the result cap, uploaded as ``output.json`` when a bucket is configured; the job's output
    becomes its reference. Without a bucket, OutputTooLarge naming BUCKET_ENDPOINT_URL."""
    bucket = bucket_from_env()
    if bucket is None:
        raise OutputTooLarge(
            f"{what} is {len(data)} bytes serialized, over the {cap}-byte result cap; set BUCKET_ENDPOINT_URL "
            "(with BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY) to offload large outputs to a bucket"
        )
    ref = await asyncio.to_thread(
        _upload, bucket, job_id, name="output.json", content_type="application/json", source=data, size=len(data)
    )
    return codec.dumps(ref)


# --- S3 ------------------------------------------------------------------------------------------------------

_clients: dict[Bucket, Any] = {}
_clients_lock = threading.Lock()


def _client(bucket: Bucket) -> Any:
    # Making a boto3 client takes ~50 ms and is not thread-safe; a made client is.
    with _clients_lock:
        c = _clients.get(bucket)
        if c is None:
            try:
                import boto3  # type: ignore[import-untyped]
                from botocore.config import Config  # type: ignore[import-untyped]
            except ImportError:
                raise FileError(
                    "uploading File outputs needs boto3: pip install 'handler-sdk[files]' "
                    "(or unset BUCKET_ENDPOINT_URL)"
                ) from None
            c = _clients[bucket] = boto3.client(
                "s3", endpoint_url=bucket.endpoint, aws_access_key_id=bucket.access_key,
                aws_secret_access_key=bucket.secret_key, region_name=bucket.region,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )  # fmt: skip
        return c


def _upload(bucket: Bucket, job_id: str, *, name: str, content_type: str, source: Any, size: int) -> dict[str, Any]:
    key = f"{bucket.prefix}{job_id}/{uuid.uuid4().hex[:12]}-{name}"
    c = _client(bucket)
    try:
        if isinstance(source, bytes):
            c.put_object(Bucket=bucket.name, Key=key, Body=source, ContentType=content_type)
        else:
            c.upload_file(str(source), bucket.name, key, ExtraArgs={"ContentType": content_type})
        url = c.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.name, "Key": key}, ExpiresIn=bucket.url_expires_s
        )
    except Exception as e:  # boto3's errors have no common base short of Exception; each is the job's failure
        raise FileError(f"upload of {name!r} to {bucket.endpoint}/{bucket.name} failed: {type(e).__name__}: {e}") from e
    return {"url": url, "content_type": content_type, "size": size}
