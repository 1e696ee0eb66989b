"""Every streaming job's items in one job-stream-batch request per round trip, with no task, future or await per
item or per job on the way.

A job's ``Stream`` handle is its emit: ``emit`` appends the item to the job's list and, the first time the list
fills since the last request, puts the job on the multiplexer's dirty list. One sender task per burst takes every
dirty job's list into one request body of at most ``max_bytes`` (the 1 MiB stream limit), posts it, and applies
the endpoint's verdict for each job: its items are delivered, or the job is stopped (404/409), or they go back to
the front of its list to be retried with the next request. So what queues while one request is in flight leaves
together in the next, and a job whose engine steps with all the others (every stream woken in the same loop
iteration) costs one list append per item and nothing per step.

Order per job holds because a job's items are only ever in one request at a time, and failed ones are put back
in front of anything queued after them. ``max_buffered`` bytes queued for one job make its emit return an
awaitable (the handler waits until the sender takes them), so a fast generator cannot outrun the network.
"""

from __future__ import annotations

import asyncio
import logging
import random
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import cast

from .. import codec
from ..chunker import EncodedItem
from ..errors import StaleResult, TransportError

__all__ = ["Mux", "Stream"]

log = logging.getLogger(__name__)

# A request body: what is sent; the job ids and codes of the endpoint's verdicts, in the order of the parts.
Post = Callable[[bytes], Awaitable[tuple[list[str], list[int]]]]
# One item alone, for the rare item too big to share a 1 MiB body with the batch envelope: the job's own route.
PostOne = Callable[[str, EncodedItem], Awaitable[int]]

_OPEN = b'{"streams":['
_CLOSE = b"]}"
# A part's fields besides its id and items: "outputs":[ ... ],"metrics":[ ... ]} and the comma before the next.
_PART = len(b'"outputs":[],"metrics":[]}') + 1
_METRICS = b'],"metrics":['
_PART_END = b"]},"
# An item's share of a part besides its output (as EncodedItem.size counts it): its metrics or a null, two commas.
_NO_METRICS = 6
_COMMAS = 2

# A job's items as its part carries them: the outputs, and the metrics (None for none) in the same order.
Items = tuple[list[bytes], list[bytes | None]]

# Past this many streams with items queued, the wait between requests grows with them, up to SPREAD_MAX times the
# interval: a request costs the worker per stream in it (its part's joins and verdict), so at a GPU's many streams,
# each with a token every few steps, a request per interval carried ~1.5 items per stream at 256 streams. With the
# wait 2.5 times longer (50 ms at the worker's 20 ms) each part carries ~4, and a token waits at most that long.
SPREAD_FROM = 64
SPREAD_MAX = 2.5


class Stream:
    """One job's stream: ``emit`` per item (None, or an awaitable when the job must wait for room), ``flush`` at the
    end (every item delivered, or the delivery error raised), ``abort`` when the job is stopped.

    The queue is two lists (outputs, metrics) rather than the items, so a part is two joins and no pass over them
    in Python."""

    __slots__ = ("_done", "_fixed", "_head", "_max", "_mux", "_room", "attempts", "error", "inflight", "job_id",
                 "metrics", "outputs", "queued", "retries", "sent", "size")  # fmt: skip

    def __init__(self, mux: Mux, job_id: str, max_buffered: int, retries: int) -> None:
        self._mux = mux
        self.job_id = job_id
        self._head = b'{"id":' + codec.dumps(job_id) + b',"outputs":['
        self._fixed = len(self._head) + _PART  # a part's bytes besides its items'
        self._max = max_buffered
        self.retries = retries
        self.outputs: list[bytes] = []
        self.metrics: list[bytes | None] = []
        self.size = 0  # the queued items' bytes (their share of a batch body)
        self.queued = False  # on the multiplexer's dirty list
        self.inflight: Items | None = None  # the items in the request now in flight
        self.attempts = 0  # failed sends of the items in front, in a row
        self.error: BaseException | None = None
        self.sent = 0
        self._room: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None

    def emit(self, item: EncodedItem) -> Awaitable[None] | None:
        return self.emit_parts(item.output, item.metrics)

    def emit_parts(self, output: bytes, metrics: bytes | None) -> Awaitable[None] | None:
        """``emit`` of an item given as its two parts (chunker.encode_parts): the runner's path for each token,
        with no EncodedItem made only to be taken apart here. Its size counts as EncodedItem.size does."""
        if self.error is not None:
            raise self.error
        self.outputs.append(output)
        self.metrics.append(metrics)
        self.size += len(output) + (_NO_METRICS if metrics is None else len(metrics) + _COMMAS)
        if not self.queued:
            self.queued = True
            mux = self._mux
            mux._dirty.append(self)
            if mux._task is None:
                mux.start()
        if self.size >= self._max:
            return self._wait_room()
        return None

    async def _wait_room(self) -> None:
        while self.size >= self._max and self.error is None:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self.error is not None:
            raise self.error

    async def flush(self) -> None:
        """Wait until every item emitted so far is delivered; re-raises a delivery failure."""
        while self.error is None and (self.outputs or self.inflight is not None):
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await self._done
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """The job was stopped: its queued items are dropped (what is in flight lands or not)."""
        self._clear()
        if self.error is None:
            self.error = StaleResult(f"stream of job {self.job_id} aborted")
        self.wake()

    def wake(self) -> None:
        """Tell a waiting emit or flush that the queue moved on (or failed)."""
        room, done = self._room, self._done
        if room is not None and (self.size < self._max or self.error is not None):
            self._room = None
            if not room.done():
                room.set_result(None)
        if done is not None and (self.error is not None or (not self.outputs and self.inflight is None)):
            self._done = None
            if not done.done():
                done.set_result(None)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._clear()
        self.inflight = None
        self.wake()

    def _clear(self) -> None:
        self.outputs, self.metrics, self.size = [], [], 0

    def take(self, n: int | None = None) -> Items:
        """The first ``n`` queued items (all by default), now in flight."""
        if n is None or n >= len(self.outputs):
            taken = self.outputs, self.metrics
            self.outputs, self.metrics, self.size, self.queued = [], [], 0, False
        else:
            taken = self.outputs[:n], self.metrics[:n]
            del self.outputs[:n], self.metrics[:n]
            self.size -= sum(_sizes(*taken))
        self.inflight = taken
        if self._room is not None:
            self.wake()  # room for the emit that waits
        return taken

    def put_back(self, items: Items) -> None:
        """Items that did not land, back in front of what queued meanwhile."""
        self.outputs[:0], self.metrics[:0] = items
        self.size += sum(_sizes(*items))

    def part(self, items: Items) -> bytes:
        """``{"id":...,"outputs":[...],"metrics":[...]}``: this job's part of a job-stream-batch body."""
        outs, mets = items
        outputs = b",".join(outs)
        nulls = mets.count(None)
        if nulls == len(mets):
            return b"".join((self._head, outputs, b"]}"))
        m = b",".join(cast("list[bytes]", mets) if not nulls else [b"null" if x is None else x for x in mets])
        return b"".join((self._head, outputs, b'],"metrics":[', m, b"]}"))


def _output_bytes(outs: list[bytes]) -> int:
    return sum(map(len, outs))


def _sizes(outs: list[bytes], mets: list[bytes | None]) -> list[int]:
    return [len(o) + (_NO_METRICS if m is None else len(m) + _COMMAS) for o, m in zip(outs, mets, strict=True)]


class Mux:
    """The per-worker multiplexer: ``open(job_id)`` gives a job's ``Stream``; ``post`` sends one job-stream-batch
    body and answers each part's job id and code in order, ``post_one`` sends one item on its job's own route (for
    an item too big to share a body). Requests start at most every ``interval_s``: the first item after a quiet
    spell goes at once, and at a GPU's token rate each request carries every stream's items of a few steps. With
    more than ``SPREAD_FROM`` streams queued, the interval grows in proportion, up to ``SPREAD_MAX`` times."""

    def __init__(self, post: Post, post_one: PostOne, max_bytes: int, *, interval_s: float = 0.0) -> None:
        self._post = post
        self._post_one = post_one
        self._max = max_bytes
        self._interval = interval_s
        self._last = -1e9  # when the last request started (loop time)
        self._dirty: list[Stream] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight_bytes = 0  # the outputs' bytes of the request in flight
        self.backoff_s = 0.2
        # Delivered, for the worker's /metrics: items, and their outputs' bytes.
        self.items_sent = 0
        self.bytes_sent = 0

    def open(self, job_id: str, *, max_buffered: int = 8 << 20, retries: int = 5, backoff_s: float = 0.2) -> Stream:
        self.backoff_s = backoff_s
        return Stream(self, job_id, max_buffered, retries)

    def start(self) -> None:
        """A stream queued its first item since the last request: send. The task's first step runs after the
        callbacks already due, so every stream that the same engine step woke has queued its items by then."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-mux")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_s
        try:
            while self._dirty:
                if (wait := self._last + self._wait(len(self._dirty)) - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self._last = loop.time()
                parts, body = self._take()
                if not parts:
                    continue
                error: TransportError | None = None
                try:
                    if body is None:  # one item too big to share a body: its job's own route
                        s = parts[0]
                        assert s.inflight is not None
                        item = EncodedItem(s.inflight[0][0], s.inflight[1][0])
                        self._inflight_bytes = len(item.output)
                        ids, codes = [s.job_id], [await self._post_one(s.job_id, item)]
                    else:
                        ids, codes = await self._post(body)
                except TransportError as e:
                    error, ids, codes = e, [s.job_id for s in parts], [0] * len(parts)
                if error is None and codes.count(200) == len(parts) and ids == [s.job_id for s in parts]:
                    self._delivered(parts, self._inflight_bytes)
                    delay = self.backoff_s
                    continue
                if self._verdicts(parts, ids, codes, error) and self._dirty:
                    log.warning("stream post failed (%s); retrying in about %.2fs", error or codes, delay)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay *= 2
        finally:
            self._task = None

    def _wait(self, streams: int) -> float:
        """The interval between two requests when ``streams`` streams have items queued."""
        if streams <= SPREAD_FROM:
            return self._interval
        return self._interval * min(SPREAD_MAX, streams / SPREAD_FROM)

    def _take(self) -> tuple[list[Stream], bytes | None]:
        """The dirty streams' items that fit in one body (every stream's whole queue, usually), now in flight."""
        room = self._max - len(_OPEN) - len(_CLOSE)
        parts: list[Stream] = []
        # The body's pieces, for one join at the end: each part ends with its comma, the last one's cut below.
        chunks: list[bytes] = [_OPEN]
        nbytes = 0
        join = b",".join
        dirty = self._dirty
        self._dirty = []
        for s in dirty:
            outs = s.outputs
            if not outs or s.error is not None:
                s.queued = False
                continue
            need = s.size + s._fixed
            if need > room:
                return self._take_big(dirty, dirty.index(s), parts, chunks, room, nbytes=nbytes)
            # s.part(s.take()), written out: this runs for every stream at every request.
            mets = s.metrics
            s.outputs = []
            s.metrics = []
            s.size = 0
            s.queued = False
            s.inflight = (outs, mets)
            if s._room is not None:
                s.wake()
            outputs = join(outs)
            nbytes += len(outputs) - len(outs) + 1
            if not mets.count(None):
                chunks += (s._head, outputs, _METRICS, join(mets), _PART_END)  # type: ignore[arg-type]
            elif mets.count(None) == len(mets):
                chunks += (s._head, outputs, _PART_END)
            else:
                chunks += (s.part((outs, mets)), b",")
            room -= need
            parts.append(s)
        return parts, self._body(chunks, nbytes)

    def _body(self, chunks: list[bytes], nbytes: int) -> bytes:
        """The request body from its pieces (every part's with its comma after it); ``nbytes`` is its outputs'."""
        self._inflight_bytes = nbytes
        if len(chunks) > 1:
            chunks[-1] = chunks[-1][:-1]  # the last part's comma
        chunks.append(_CLOSE)
        return b"".join(chunks)

    def _take_big(
        self, dirty: list[Stream], i: int, parts: list[Stream], chunks: list[bytes], room: int, *, nbytes: int
    ) -> tuple[list[Stream], bytes | None]:
        """``dirty[i]`` does not fit in what is left of the body: the prefix of its items that does goes in it,
        and the rest waits at the front of its queue (with every stream after it) for the next request."""
        s = dirty[i]
        ends = list(accumulate(_sizes(s.outputs, s.metrics)))
        n = bisect_right(ends, room - s._fixed)
        if n == 0 and not parts:
            # Alone and still too big for the envelope: one item, on its job's own route.
            s.take(1)
            s.queued = bool(s.outputs)
            self._dirty = [s, *dirty[i + 1 :]] if s.queued else dirty[i + 1 :]
            return [s], None
        if n:
            items = s.take(n)
            chunks += (s.part(items), b",")
            nbytes += _output_bytes(items[0])
            parts.append(s)
        self._dirty = dirty[i:] + self._dirty  # still queued, in front of what queued meanwhile
        return parts, self._body(chunks, nbytes)

    def _delivered(self, parts: list[Stream], size: int) -> None:
        """``parts`` landed; ``size`` is their items' outputs' bytes (less any of a stream aborted meanwhile)."""
        n = 0
        for s in parts:
            items = s.inflight
            s.inflight = None
            if items is not None:
                if s.error is None:
                    k = len(items[0])
                    s.sent += k
                    n += k
                    s.attempts = 0
                else:
                    size -= _output_bytes(items[0])  # aborted while in flight: not counted as sent
            if s._done is not None:
                s.wake()
        self.items_sent += n
        self.bytes_sent += size

    def _verdicts(self, parts: list[Stream], ids: list[str], codes: list[int], error: TransportError | None) -> bool:
        """Each part's fate when not all of them landed: delivered, stopped, or back in front of its queue (then
        True: the next request waits out a backoff)."""
        again = False
        if ids != [s.job_id for s in parts]:
            by_id = dict(zip(ids, codes, strict=False))
            codes = [by_id.get(s.job_id, 500) for s in parts]
        for s, code in zip(parts, codes, strict=False):
            if code == 200:
                self._delivered([s], _output_bytes(s.inflight[0]) if s.inflight is not None else 0)
                continue
            items = s.inflight
            s.inflight = None
            if items is None or s.error is not None:  # aborted meanwhile
                s.wake()
            elif code in (404, 409):
                s.fail(StaleResult(f"stream of job {s.job_id} answered {code}"))
            elif s.attempts >= s.retries:
                s.fail(error or TransportError(f"stream of job {s.job_id} answered {code}"))
            else:
                s.attempts += 1
                s.put_back(items)
                again = True
                if not s.queued:
                    s.queued = True
                    self._dirty.append(s)
        return again
