"""The HTTP transport: the runpod-compatible worker protocol, plus our extensions where the endpoint announces
them (``X-Handler-SDK`` response header): several stream items per request, and handing jobs back at a drain
deadline. Against any other endpoint it speaks plain runpod: one item per request, leases that lapse."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from yarl import URL

from .. import __version__, codec
from ..chunker import EncodedItem, batch_body, single_body
from ..errors import StaleResult, TransportError
from ..models import MAX_STREAM_BATCH_BYTES, JobStatus
from ..runner import Outcome
from .coalesce import Coalescer
from .config import Endpoints
from .transport import Assignment

__all__ = ["EXTENSIONS_HEADER", "HttpTransport"]

EXTENSIONS_HEADER = "X-Handler-SDK"
_JSON = {"Content-Type": "application/json"}
# The endpoint caps a job-done-batch body at the result cap plus 1 MiB: a request carries at most this much.
_BATCH_BYTES = 8 << 20
_STATUS_FIELD = {s: b'"status":' + codec.dumps(s.value) for s in JobStatus}


class HttpTransport:
    direct = False

    def __init__(self, endpoints: Endpoints, *, request_timeout_s: float = 30.0) -> None:
        self.ep = endpoints
        self.worker_id = endpoints.worker_id
        self.batch_stream = False
        self.can_hand_back = False
        self.batch_done = False
        # stream-multi: every job's stream items that queue while one request is in flight leave in the next.
        self.multi_stream = False
        self._streams = Coalescer(self._send_streams, MAX_STREAM_BATCH_BYTES)
        # Results waiting for the next job-done-batch request: the job id, its {"id":...} item, and the future
        # its reporter awaits; and the items' bytes in all.
        self._results: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._results_bytes = 0
        self._results_task: asyncio.Task[None] | None = None
        # The endpoints' URLs are parsed once, not per request; a take URL per (batch size, busy) asked.
        self._done_batch_url = endpoints.done_batch_url
        self._stream_batch_url = endpoints.stream_batch_url
        self._stop_url = endpoints.stop_url
        self._take_urls: dict[tuple[int, bool], URL] = {}
        headers = {"User-Agent": f"handler-sdk/{__version__}"}
        if endpoints.api_key:
            headers["Authorization"] = endpoints.api_key  # bare, as the hosted platform expects
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=request_timeout_s),
            connector=aiohttp.TCPConnector(limit=0),
        )

    def _learn(self, resp: aiohttp.ClientResponse) -> None:
        ext = resp.headers.get(EXTENSIONS_HEADER)
        if ext is not None:
            # "1; ext=stream-batch,hand-back": strip before the prefix, or the space after ";" hides "ext=".
            names = {e.strip() for e in ext.split(";")[-1].strip().removeprefix("ext=").split(",")}
            self.batch_stream = "stream-batch" in names
            self.can_hand_back = "hand-back" in names
            self.batch_done = "done-batch" in names
            self.multi_stream = "stream-multi" in names

    async def _request(
        self, method: str, url: URL, *, body: bytes | None = None, params: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        if params:
            url = url.update_query(params)
        try:
            async with self._session.request(method, url, data=body, headers=_JSON if body else None) as resp:
                data = await resp.read()
                self._learn(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TransportError(f"{method} {url.path}: {type(e).__name__}: {e}") from e
        if resp.status == 409:
            raise StaleResult(f"{url.path}: 409 {data[:200]!r}")
        if resp.status >= 400:
            raise TransportError(f"{method} {url.path}: HTTP {resp.status} {data[:200]!r}")
        return resp.status, data

    def _take_url(self, n: int, busy: bool) -> URL:
        url = self._take_urls.get((n, busy))
        if url is None:
            base = self.ep.take_batch_url if n > 1 else self.ep.take_url
            params = {"job_in_progress": "1" if busy else "0", **({"batch_size": str(n)} if n > 1 else {})}
            if len(self._take_urls) >= 256:  # a concurrency modifier may wander: keep the cache small
                self._take_urls.clear()
            url = self._take_urls[(n, busy)] = base.update_query(params)
        return url

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        status, data = await self._request("GET", self._take_url(n, busy))
        if status == 204 or not data.strip():
            return []
        try:
            parsed = codec.loads(data)
        except ValueError as e:
            raise TransportError(f"job take answered malformed JSON: {e}") from e
        jobs = parsed if isinstance(parsed, list) else [parsed]
        return [self._assignment(j) for j in jobs if isinstance(j, dict) and "id" in j]

    @staticmethod
    def _assignment(j: dict[str, Any]) -> Assignment:
        policy = j.get("policy")
        timeout = None
        if policy and isinstance(policy, dict):
            timeout_ms = policy.get("executionTimeout")
            if isinstance(timeout_ms, int | float) and timeout_ms > 0:
                timeout = timeout_ms / 1000
        return Assignment(str(j["id"]), j.get("input"), j, timeout)

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        if self.multi_stream:
            # {"id":...,"outputs":[...]}: the batch body with the job's id put in front of its fields.
            fields = memoryview(batch_body(list(items)))[1:]
            await self._streams.put(job_id, b"".join((b'{"id":', codec.dumps(job_id), b",", fields)))
            return
        body = single_body(items[0]) if len(items) == 1 else batch_body(list(items))
        await self._request("POST", self.ep.stream_url(job_id), body=body, params={"isStream": "false"})

    async def _send_streams(self, pieces: list[bytes]) -> dict[str, int]:
        body = b"".join((b'{"streams":[', b",".join(pieces), b"]}"))
        _, data = await self._request("POST", self._stream_batch_url, body=body)
        try:
            return {r["id"]: r["code"] for r in codec.loads(data)["results"]}
        except (ValueError, KeyError, TypeError) as e:
            raise TransportError(f"job-stream-batch answered malformed JSON: {e}") from e

    async def progress(self, job_id: str, output: bytes) -> None:
        body = b'{"status":"IN_PROGRESS","output":' + output + b"}"
        await self._request("POST", self.ep.done_url(job_id), body=body, params={"isStream": "false"})

    @staticmethod
    def _done_fields(outcome: Outcome) -> list[bytes]:
        """A job-done body's fields, to be joined between ``{`` and ``}`` (the output is not copied until then)."""
        parts = [_STATUS_FIELD[outcome.status]]
        if outcome.output is not None:
            parts += (b',"output":', outcome.output)
        if outcome.error is not None:
            # runpod's shape: the details as a JSON string under "error"; the endpoint parses it back.
            parts += (b',"error":', codec.dumps(codec.dumps_str(outcome.error_details or outcome.error)))
        return parts

    async def done(self, job_id: str, outcome: Outcome) -> None:
        if self.batch_done:
            # While one batch is in flight, results queue and leave together in the next one: one request and
            # one journal commit for many jobs. A failed batch fails each result, which its reporter retries.
            item = b"".join([b'{"id":', codec.dumps(job_id), b",", *self._done_fields(outcome), b"}"])
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._results.append((job_id, item, fut))
            self._results_bytes += len(item)
            if self._results_task is None or self._results_task.done():
                self._results_task = asyncio.create_task(self._send_results())
            await fut
            return
        body = b"".join([b"{", *self._done_fields(outcome), b"}"])
        await self._request("POST", self.ep.done_url(job_id), body=body, params={"isStream": "false"})

    def _next_results(self) -> list[tuple[str, bytes, asyncio.Future[None]]]:
        """The queued results that fit in one request (at least one): usually all of them."""
        if self._results_bytes <= _BATCH_BYTES:
            batch, self._results, self._results_bytes = self._results, [], 0
            return batch
        n, size = 1, len(self._results[0][1])
        while n < len(self._results) and size + len(self._results[n][1]) <= _BATCH_BYTES:
            size += len(self._results[n][1])
            n += 1
        batch, self._results = self._results[:n], self._results[n:]
        self._results_bytes -= size
        return batch

    async def _send_results(self) -> None:
        while self._results:
            batch = self._next_results()
            try:
                body = b"".join([b'{"results":[', b",".join([item for _, item, _ in batch]), b"]}"])
                _, data = await self._request("POST", self._done_batch_url, body=body)
                codes = {r["id"]: r["code"] for r in codec.loads(data)["results"]}
            except (TransportError, ValueError, KeyError, TypeError) as e:
                # Never StaleResult for the whole batch: each result is judged on its own, so each is retried.
                err = TransportError(f"job-done-batch failed: {e}")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for job_id, _, fut in batch:
                if fut.done():
                    continue
                code = codes.get(job_id, 500)
                if code == 200:
                    fut.set_result(None)
                elif code in (404, 409):
                    fut.set_exception(StaleResult(f"job-done-batch: {job_id} answered {code}"))
                else:
                    fut.set_exception(TransportError(f"job-done-batch: {job_id} answered {code}"))

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None:
        params = {"runpod_version": f"handler-sdk-{__version__}"}
        if job_ids:
            params["job_id"] = ",".join(job_ids)
        if initializing:
            params["initializing"] = "1"
        await self._request("GET", self.ep.ping_url, params=params)

    async def stops(self) -> list[str]:
        status, data = await self._request("GET", self._stop_url)
        if status == 204 or not data.strip():
            return []
        try:
            parsed = codec.loads(data)
        except ValueError as e:
            raise TransportError(f"job-stop answered malformed JSON: {e}") from e
        ids = parsed.get("jobsToStop", []) if isinstance(parsed, dict) else []
        return [str(i) for i in ids]

    async def hand_back(self, job_ids: Sequence[str]) -> None:
        await self._request("POST", self.ep.hand_back_url, body=codec.dumps({"ids": list(job_ids)}))

    async def close(self) -> None:
        await self._session.close()
        # Let the connector's transports finish closing before the loop goes away.
        await asyncio.sleep(0)
