"""A stand-in for the vLLM handler in ``--quick`` runs of the engine-death benchmark: its setup starts a child
process (the "engine core"), its ``until_dead()`` returns when that child dies, and its jobs stream until then."""

import asyncio
import sys

from handler_sdk import Chunk, handler


class Engine:
    def __init__(self, core: asyncio.subprocess.Process) -> None:
        self.core = core

    async def until_dead(self) -> str:
        code = await self.core.wait()
        return f"the fake engine died: its core exited with {code}"


async def start() -> Engine:
    # The child's argv names it EngineCore, as vLLM's process title does, so the benchmark finds it the same way.
    code = "import time, sys; sys.argv[0] = 'EngineCore'; time.sleep(3600)"
    core = await asyncio.create_subprocess_exec(sys.executable, "-c", code, "EngineCore")
    return Engine(core)


@handler(concurrency=4, setup=start)
async def mortal(job):
    engine = job.state
    i = 0
    while engine.core.returncode is None:
        await asyncio.sleep(0.01)
        i += 1
        yield Chunk({"text": [f"t{i} "], "output_tokens": 1})
    raise RuntimeError("the fake engine died")
