"""``python -m benchmarks.rt_count SERVE_ARGS...``: serve with every Redis round trip it makes counted, by call.

A round trip is one write to a Redis connection (``send_packed_command``): one command, or one pipeline or
transaction, however many commands it carries. Each is counted under the call it makes: ``fcall:<function>`` for
the engine's Lua functions (``fcall:read:status``, ``fcall:workers:ping``: the functions that serve several
calls carry their sub-call, ``fcall:ratelimit:run`` its route group), else the command's name (a new
connection's ``HELLO`` and ``CLIENT``, ``SUBSCRIBE``).
On SIGUSR1 the counts so far go to the JSON file named by ``BENCH_RT_FILE`` (written whole, then renamed), with a
sequence number, so the benchmark reads them before and after a phase and takes the difference.

Counting costs a slice and a split of the command's first bytes per round trip: well under 1 % of a job here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["label", "main"]

COUNTS: Counter[str] = Counter()
_SEQ = [0]


def label(head: bytes) -> str:
    """The call a packed command makes, from its first bytes (RESP: ``*N``, then ``$len`` and each argument)."""
    parts = head.split(b"\r\n")
    args = parts[2::2]  # every other line after the array header is an argument; the ones between are lengths
    if not args:
        return "?"
    cmd = args[0].decode(errors="replace").upper()
    if cmd != "FCALL" or len(args) < 2:
        return cmd
    name = args[1].decode(errors="replace").rsplit("_", 1)[-1]
    # read, workers and hooks are one function each for several calls: ARGV[3] (after the prefix and the clock)
    # names the call; ratelimit's ARGV[3] is its route group.
    if name in ("read", "workers", "hooks", "ratelimit") and len(args) > 5:
        return f"fcall:{name}:{args[5].decode(errors='replace')}"
    return f"fcall:{name}"


def _install() -> None:
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def counted(self: Any, command: Any, check_health: bool = True) -> None:
        first = command if isinstance(command, bytes | str) else next(iter(command), b"")
        head = first.encode() if isinstance(first, str) else bytes(first[:200])
        COUNTS[label(head)] += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def _dump(path: Path) -> None:
    _SEQ[0] += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": _SEQ[0], "counts": dict(COUNTS)}))
    tmp.replace(path)


def main(argv: list[str]) -> int:
    path = Path(os.environ["BENCH_RT_FILE"])
    _install()
    signal.signal(signal.SIGUSR1, lambda *_: _dump(path))
    _dump(path)  # seq 1: a file exists from the start
    from handler_sdk.serve.__main__ import main as serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
