"""The Lua scripts of the Redis engine: each one transition, run atomically by redis-server.

Every script is ``lua/_common.lua`` (the shared helpers) followed by its own file, and is called with EVALSHA.
A redis-server that lost its script cache (a restart, SCRIPT FLUSH) answers NOSCRIPT once; the script is loaded
again and the call repeated.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["NAMES", "SCRIPTS", "Scripts"]

NAMES = ("submit", "take", "stream", "progress", "done", "cancel", "retry", "purge", "tick", "workers", "read",
         "ratelimit")  # fmt: skip


def _source(name: str) -> bytes:
    lua = resources.files(__package__).joinpath("lua")
    return lua.joinpath("_common.lua").read_bytes() + b"\n" + lua.joinpath(f"{name}.lua").read_bytes()


class Scripts:
    """The scripts' sources and SHA1s; ``call`` is one round trip while redis-server holds them."""

    def __init__(self) -> None:
        self.source = {name: _source(name) for name in NAMES}
        self.sha = {name: hashlib.sha1(src).hexdigest() for name, src in self.source.items()}

    async def load(self, client: Redis) -> None:
        """SCRIPT LOAD them all in one round trip, so that the first calls do not each pay for a NOSCRIPT."""
        async with client.pipeline(transaction=False) as pipe:
            for src in self.source.values():
                pipe.script_load(src)
            await pipe.execute()

    async def call(self, client: Redis, name: str, *args: Any) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha[name], 0, *args)
        except NoScriptError:
            await client.script_load(self.source[name])
            return await client.evalsha(self.sha[name], 0, *args)


SCRIPTS = Scripts()
