"""File outputs (uploaded to a real S3 API, moto's server on loopback, or inlined), outputs over the result cap
offloaded to the bucket, and files.download(): per-job folder, size cap, timeout, and the private-address guard."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from conftest import HANDLERS, ROOT, free_port
from hypothesis import given
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer

from handler_sdk import File, FileError, files, handler
from handler_sdk.files import _CheckingResolver, refusal
from handler_sdk.job import Job
from handler_sdk.loader import load_handler
from handler_sdk.models import FileRef, InlineFile
from handler_sdk.runner import run_job
from handler_sdk.threads import ElasticPool

BUCKET = "outputs"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with the bucket made; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def bucket(s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3}/{BUCKET}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "1")  # the bucket is on loopback
    return s3


@pytest.fixture(autouse=True)
def no_bucket_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BUCKET_ENDPOINT_URL", "HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE"):
        monkeypatch.delenv(name, raising=False)


async def fetch(url: str) -> tuple[bytes, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.read(), r.content_type


# --- outputs to the bucket ------------------------------------------------------------------------------------


async def test_a_returned_file_is_uploaded_and_becomes_a_presigned_url(endpoint_factory, bucket, tmp_path):
    png = tmp_path / "pic.png"
    png.write_bytes(b"\x89PNG fake image bytes" * 100)
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"path": str(png)}})
    assert job["status"] == "COMPLETED", job
    ref = FileRef.model_validate(job["output"]["image"])
    assert job["output"]["n"] == 1
    assert ref.content_type == "image/png" and ref.size == png.stat().st_size
    assert ref.url.startswith(f"{bucket}/{BUCKET}/{job['id']}/")
    assert await fetch(ref.url) == (png.read_bytes(), "image/png")


async def test_a_file_in_each_stream_item_is_uploaded_too(endpoint_factory, bucket):
    ep = await endpoint_factory("files_io.py:streams_files")
    _, job = await ep.post("run", {"input": {"n": 3}})
    await ep.wait_status(job["id"], "COMPLETED")
    _, stream = await ep.get(f"stream/{job['id']}")
    assert [i["output"]["i"] for i in stream["stream"]] == [0, 1, 2]
    for i, item in enumerate(stream["stream"]):
        ref = FileRef.model_validate(item["output"]["file"])
        assert await fetch(ref.url) == (f"item {i}".encode(), "text/plain")


async def test_a_final_output_over_the_cap_is_offloaded_to_the_bucket_instead_of_failing(endpoint_factory, bucket):
    ep = await endpoint_factory("files_io.py:big_output", result_cap=4096)
    _, job = await ep.post("runsync", {"input": {"n": 10_000}})
    assert job["status"] == "COMPLETED", job
    ref = FileRef.model_validate(job["output"])
    data, ctype = await fetch(ref.url)
    assert ctype == "application/json" and ref.size == len(data)
    assert json.loads(data) == {"blob": "x" * 10_000}


async def test_an_upload_that_fails_fails_the_job_with_the_reason(endpoint_factory, bucket, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{bucket}/no-such-bucket")
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"text": "hi"}})
    assert job["status"] == "FAILED"
    assert job["error"].startswith("FileError: upload of 'file' to") and "NoSuchBucket" in job["error"]


@pytest.mark.parametrize("url", ["ftp://host/bucket", "http://host:9000", "not a url"])
async def test_a_malformed_bucket_url_fails_the_job_naming_the_variable(endpoint_factory, monkeypatch, url):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", url)
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"text": "hi"}})
    assert job["status"] == "FAILED" and "must be http(s)://host[:port]/BUCKET" in job["error"]


# --- outputs without a bucket ---------------------------------------------------------------------------------


async def test_without_a_bucket_a_file_under_the_limit_is_inlined_as_base64(endpoint_factory):
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"text": "hello"}})
    inline = InlineFile.model_validate(job["output"])
    assert inline.content_type == "text/plain" and base64.b64decode(inline.data_base64) == b"hello"


async def test_without_a_bucket_a_file_over_the_limit_fails_naming_bucket_endpoint_url(endpoint_factory, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 5000)
    ep = await endpoint_factory("files_io.py:returns_file", result_cap=4096)
    _, job = await ep.post("runsync", {"input": {"path": str(big)}})
    assert job["status"] == "FAILED" and job["error"].startswith("FileError: File output 'big.bin' is 5000 bytes")
    assert "set BUCKET_ENDPOINT_URL" in job["error"]


async def test_without_a_bucket_a_stream_item_file_over_1_mib_fails_naming_bucket_endpoint_url():
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield File(b"x" * (1 << 20))

    o = await run_job(h, Job({"id": "j", "input": {}}), emit=_drop, pool=ElasticPool())
    assert o.error is not None and "set BUCKET_ENDPOINT_URL" in o.error


async def _drop(item: Any) -> None:
    pass


async def test_without_a_bucket_an_output_over_the_cap_fails_naming_bucket_endpoint_url(endpoint_factory):
    ep = await endpoint_factory("files_io.py:big_output", result_cap=4096)
    _, job = await ep.post("runsync", {"input": {"n": 10_000}})
    assert job["status"] == "FAILED" and "4096-byte result cap" in job["error"]
    assert "set BUCKET_ENDPOINT_URL" in job["error"]


async def test_a_file_whose_path_is_gone_fails_the_job_clearly(endpoint_factory, tmp_path):
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"path": str(tmp_path / "gone.png")}})
    assert job["status"] == "FAILED"
    assert "FileError: File output 'gone.png'" in job["error"] and "No such file" in job["error"]


def test_file_takes_a_path_or_bytes_and_guesses_its_content_type(tmp_path):
    assert File(tmp_path / "a.json").content_type == "application/json"
    assert File(b"..").content_type == "application/octet-stream"
    assert File(b"..", name="x.wav").content_type in ("audio/x-wav", "audio/wav")
    assert File("clip.mp4", content_type="video/quicktime").content_type == "video/quicktime"
    with pytest.raises(TypeError):
        File(42)  # type: ignore[arg-type]


# --- downloads ------------------------------------------------------------------------------------------------


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """A loopback HTTP server: /file, /big (no length), /redirect?to=URL, /slow, /missing."""

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=b"payload bytes", content_type="text/plain")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"y" * 1024)
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(body=b"late")

    app = web.Application()
    for path, fn in (("/file", file), ("/big", big), ("/redirect", redirect), ("/slow", slow)):
        app.router.add_get(path, fn)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def run_handler(target: str, inp: dict[str, Any]) -> Any:
    h = load_handler(str(HANDLERS / target))
    pool = ElasticPool()
    try:
        return await run_job(h, Job({"id": "job-dl", "input": inp}), emit=_drop, pool=pool)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("target", ["files_io.py:downloads", "files_io.py:downloads_async"])
async def test_a_download_lands_in_a_job_folder_that_is_removed_after_the_job(bucket, target):
    client = boto3.client("s3", endpoint_url=bucket, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")  # fmt: skip
    client.put_object(Bucket=BUCKET, Key="in/prompt.txt", Body=b"from the bucket")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "in/prompt.txt"})
    o = await run_handler(target, {"url": url})
    assert o.error is None, o.error
    out = json.loads(o.output)
    assert out["text"] == "from the bucket" and Path(out["path"]).name == "prompt.txt"
    assert "job-dl" in Path(out["path"]).parent.name
    assert not Path(out["path"]).parent.exists()  # removed with the job


async def test_downloads_refuse_loopback_by_default(origin):
    with pytest.raises(FileError, match=r"127\.0\.0\.1 is a loopback address \(set HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE"):
        await files.download_async(f"{origin}/file")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),
        ("http://10.1.2.3/x", "private"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://100.100.100.200/latest/meta-data/", "non-public"),
    ],
)
async def test_downloads_refuse_metadata_and_private_addresses_before_connecting(url, kind):
    with pytest.raises(FileError, match=f"is a {kind} address"):
        await files.download_async(url, timeout_s=5)


async def test_a_redirect_to_a_private_address_is_refused(origin, monkeypatch):
    monkeypatch.setenv("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "127.0.0.1")  # this origin only
    assert (await files.download_async(f"{origin}/file", dest=Path(await asyncio.to_thread(_tmp)))).exists()
    inward = f"http://127.0.0.2:{origin.rsplit(':', 1)[1]}/file"
    with pytest.raises(FileError, match=r"127\.0\.0\.2 is a loopback address"):
        await files.download_async(f"{origin}/redirect?to={inward}")


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp()


async def test_a_name_is_refused_if_any_of_its_addresses_is_not_allowed():
    class TwoAddresses(aiohttp.abc.AbstractResolver):
        """DNS for a name that has a public and a private address (the test has no DNS of its own)."""

        async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[Any]:
            return [{"hostname": host, "host": a, "port": port, "family": 2, "proto": 0, "flags": 0}
                    for a in ("93.184.215.14", "10.0.0.7")]  # fmt: skip

        async def close(self) -> None:
            pass

    r = _CheckingResolver(allowed=[])
    r._inner = TwoAddresses()
    with pytest.raises(OSError, match=r"two\.example resolves to 10\.0\.0\.7 is a private address"):
        await r.resolve("two.example", 80)
    r.allowed = [ipaddress.ip_network("10.0.0.0/8")]
    assert len(await r.resolve("two.example", 80)) == 2


async def test_the_size_cap_is_checked_before_and_while_reading(origin, monkeypatch, tmp_path):
    monkeypatch.setenv("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "1")
    with pytest.raises(FileError, match=r"it is 13 bytes, over max_bytes=10"):
        await files.download_async(f"{origin}/file", max_bytes=10, dest=tmp_path)
    with pytest.raises(FileError, match=r"stopped: over max_bytes=10000"):
        await files.download_async(f"{origin}/big", max_bytes=10_000, dest=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone
    assert (await files.download_async(f"{origin}/big", dest=tmp_path)).stat().st_size == 64 * 1024


async def test_downloads_time_out_and_report_http_errors_and_bad_urls(origin, monkeypatch, tmp_path):
    monkeypatch.setenv("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "1")
    with pytest.raises(FileError, match=r"timed out after 0\.3 s"):
        await files.download_async(f"{origin}/slow", timeout_s=0.3, dest=tmp_path)
    with pytest.raises(FileError, match="failed: HTTP 404 Not Found"):
        await files.download_async(f"{origin}/missing", dest=tmp_path)
    with pytest.raises(FileError, match="only http:// and https:// URLs"):
        await files.download_async("file:///etc/passwd", dest=tmp_path)
    with pytest.raises(FileError, match="ClientConnectorError"):
        await files.download_async(f"http://127.0.0.1:{free_port()}/x", dest=tmp_path)


async def test_the_blocking_download_in_an_async_handler_says_to_use_download_async():
    with pytest.raises(FileError, match=r"await handler_sdk\.files\.download_async"):
        files.download("https://example.com/x")


def test_a_bad_allow_list_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "10.0.0.0/8,intranet")
    with pytest.raises(FileError, match="'intranet', which is not an address or network"):
        files.download("http://10.0.0.1/x")


_ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
)


@given(_ADDRESSES)
def test_an_address_is_allowed_exactly_when_it_is_public(addr):
    plain = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped else addr
    assert (refusal(addr, []) is None) == (plain.is_global and not plain.is_multicast)
    assert refusal(addr, None) is None


async def test_the_files_example_downloads_its_input_and_uploads_its_output(endpoint_factory, bucket):
    client = boto3.client("s3", endpoint_url=bucket, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")  # fmt: skip
    client.put_object(Bucket=BUCKET, Key="in/words.txt", Body=b"quiet words")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "in/words.txt"})
    ep = await endpoint_factory(load_handler(str(ROOT / "examples/files.py")))
    _, job = await ep.post("runsync", {"input": {"url": url}})
    assert job["status"] == "COMPLETED", job
    assert job["output"]["chars"] == len("quiet words")
    ref = FileRef.model_validate(job["output"]["loud"])
    assert await fetch(ref.url) == (b"QUIET WORDS", "text/plain")


def test_the_bucket_variables_name_endpoint_bucket_prefix_region_and_expiry():
    from handler_sdk.storage import bucket_from_env

    assert bucket_from_env({}) is None
    b = bucket_from_env({"BUCKET_ENDPOINT_URL": "https://s3.eu-west-3.amazonaws.com/my-bucket/runs/today/",
                         "BUCKET_ACCESS_KEY_ID": "id", "BUCKET_SECRET_ACCESS_KEY": "secret"})  # fmt: skip
    assert b is not None
    assert (b.endpoint, b.name, b.prefix, b.region) == ("https://s3.eu-west-3.amazonaws.com", "my-bucket",
                                                        "runs/today/", "eu-west-3")  # fmt: skip
    assert (b.access_key, b.secret_key, b.url_expires_s) == ("id", "secret", 7 * 24 * 3600)
    b = bucket_from_env({"BUCKET_ENDPOINT_URL": "http://minio:9000/b1", "BUCKET_REGION": "here",
                         "HANDLER_SDK_BUCKET_URL_EXPIRES_S": "60"})  # fmt: skip
    assert b is not None and (b.region, b.url_expires_s, b.prefix) == ("here", 60, "")
    with pytest.raises(FileError, match="whole number of seconds"):
        bucket_from_env({"BUCKET_ENDPOINT_URL": "http://minio:9000/b1", "HANDLER_SDK_BUCKET_URL_EXPIRES_S": "1h"})


async def test_extra_path_segments_of_the_bucket_url_prefix_the_object_keys(endpoint_factory, bucket, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{bucket}/{BUCKET}/team/run-7")
    ep = await endpoint_factory("files_io.py:returns_file")
    _, job = await ep.post("runsync", {"input": {"text": "prefixed"}})
    ref = FileRef.model_validate(job["output"])
    assert ref.url.startswith(f"{bucket}/{BUCKET}/team/run-7/{job['id']}/")
    assert await fetch(ref.url) == (b"prefixed", "text/plain")
