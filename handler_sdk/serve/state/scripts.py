"""The Lua of the Redis engine: one function per transition, run atomically by redis-server.

The functions form one Redis 7 library: ``lua/_common.lua`` (the shared helpers and tables, defined once when the
library loads) and one file per transition, each the body of a function. A call is one FCALL. The library and its
functions are named after a hash of their source, so replicas running two versions during an upgrade each call
their own. A redis-server that lost the library (a restart without persistence, FUNCTION FLUSH) answers "function
not found" once; the library is loaded again and the call repeated.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["NAMES", "SCRIPTS", "Scripts"]

NAMES = ("submit", "take", "stream", "progress", "done", "cancel", "retry", "purge", "tick", "workers", "read",
         "ratelimit", "hooks", "wake")  # fmt: skip


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """The library's source and function names; ``call`` is one round trip while redis-server holds it."""

    def __init__(self) -> None:
        common = _read("_common")
        bodies = {name: _read(name) for name in NAMES}
        digest = hashlib.sha1("\n".join([common, *bodies.values()]).encode()).hexdigest()[:12]
        self.library = f"hsdk_{digest}"
        self.function = {name: f"hsdk_{digest}_{name}" for name in NAMES}
        parts = [f"#!lua name={self.library}", common]
        for name, body in bodies.items():
            parts.append(
                f"redis.register_function('{self.function[name]}', function(KEYS, ARGV)\nbind(ARGV)\n{body}\nend)"
            )
        self.source = "\n".join(parts)
        # The same transition as a plain script (EVAL), helpers and all: a yardstick for the benchmarks only.
        self.eval_source = {name: f"{common}\nbind(ARGV)\n{body}" for name, body in bodies.items()}

    async def load(self, client: Redis) -> None:
        """Load the library unless redis-server holds it already (compiling it costs milliseconds)."""
        if not await client.function_list(library=self.library):
            await client.function_load(self.source, replace=True)

    async def call(self, client: Redis, name: str, *args: Any) -> Any:
        from redis.exceptions import ResponseError

        try:
            return await client.fcall(self.function[name], 0, *args)
        except ResponseError as e:
            if "function not found" not in str(e).lower():
                raise
            await self.load(client)
            return await client.fcall(self.function[name], 0, *args)


SCRIPTS = Scripts()
