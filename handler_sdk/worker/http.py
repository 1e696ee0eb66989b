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
from ..models import MAX_STREAM_BYTES, JobStatus
from ..runner import Outcome
from .config import Endpoints
from .mux import Mux, Stream
from .transport import Assignment

__all__ = ["EXTENSIONS_HEADER", "HttpTransport"]

EXTENSIONS_HEADER = "X-Handler-SDK"
_JSON = {"Content-Type": "application/json"}
# The endpoint caps a job-done-batch body at the result cap plus 1 MiB: a request carries at most this much.
_BATCH_BYTES = 8 << 20
# stream-multi requests start at most this often: at a GPU's token rate each then carries every stream's items of
# a few engine steps (one aiohttp request costs the worker as much CPU as ~50 items), and a token waits at most
# this long (the first one after a quiet spell not at all).
STREAM_INTERVAL_S = 0.02
_STATUS_FIELD = {s: b'"status":' + codec.dumps(s.value) for s in JobStatus}
_COMPLETED = JobStatus.COMPLETED


class HttpTransport:
    direct = False

    def __init__(self, endpoints: Endpoints, *, request_timeout_s: float = 30.0) -> None:
        self.ep = endpoints
        self.worker_id = endpoints.worker_id
        self.batch_stream = False
        self.can_hand_back = False
        self.batch_done = False
        # stream-multi: every job's stream items that queue while one request is in flight leave in the next,
        # each request within the 1 MiB stream limit.
        self.multi_stream = False
        # take-pipeline: several takes of this worker id may be in flight at once.
        self.takes_in_flight = 1
        self._mux = Mux(self._post_streams, self._post_one, MAX_STREAM_BYTES, interval_s=STREAM_INTERVAL_S)
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
            self.takes_in_flight = 2 if "take-pipeline" in names else 1

    async def _request(
        self,
        method: str,
        url: URL,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> tuple[int, bytes]:
        """The status and body; a 409 raises StaleResult and any other status >= 400 TransportError, unless
        ``check`` is off (the caller judges the status)."""
        if params:
            url = url.update_query(params)
        try:
            async with self._session.request(method, url, data=body, headers=_JSON if body else None) as resp:
                data = await resp.read()
                self._learn(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TransportError(f"{method} {url.path}: {type(e).__name__}: {e}") from e
        if not check:
            return resp.status, data
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

    def open_stream(self, job_id: str, *, retries: int = 5, backoff_s: float = 0.2) -> Stream | None:
        """A job's stream on the shared multiplexer (stream-multi), or None: the worker then sends through
        ``stream`` per job."""
        if not self.multi_stream:
            return None
        return self._mux.open(job_id, retries=retries, backoff_s=backoff_s)

    @property
    def stream_sent(self) -> tuple[int, int]:
        """Items delivered through ``open_stream``'s streams, and their outputs' bytes."""
        return self._mux.items_sent, self._mux.bytes_sent

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        body = single_body(items[0]) if len(items) == 1 else batch_body(list(items))
        await self._request("POST", self.ep.stream_url(job_id), body=body, params={"isStream": "false"})

    async def _post_streams(self, body: bytes) -> tuple[list[str], list[int]]:
        _, data = await self._request("POST", self._stream_batch_url, body=body)
        try:
            results = codec.loads(data)["results"]
            return [r["id"] for r in results], [r["code"] for r in results]
        except (ValueError, KeyError, TypeError) as e:
            raise TransportError(f"job-stream-batch answered malformed JSON: {e}") from e

    async def _post_one(self, job_id: str, item: EncodedItem) -> int:
        """One item on the job's own route: the status it answered (job-stream judges one job as a part is)."""
        status, _ = await self._request(
            "POST", self.ep.stream_url(job_id), body=batch_body([item]), params={"isStream": "false"}, check=False
        )
        return status

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
            if outcome.error is None and outcome.status is _COMPLETED:
                # A plain success: its id and output (the endpoint reads no status as COMPLETED).
                out = outcome.output
                item = (
                    b'{"id":%b}' % codec.dumps(job_id)
                    if out is None
                    else b'{"id":%b,"output":%b}' % (codec.dumps(job_id), out)
                )
            else:
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
