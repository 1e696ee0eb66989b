"""Handlers that fail in the ways the error tests check."""

import asyncio

from pydantic import BaseModel

from handler_sdk import handler

RAN: list[object] = []


class Params(BaseModel):
    prompt: str
    n: int


@handler
def typed(params: Params):
    RAN.append(params)
    return {"prompt": params.prompt, "n": params.n}


@handler
def not_json(job):
    return {"obj": object()}


@handler
def sized(job):
    return "x" * job.input["size"]


@handler(timeout=0.3)
async def slow(job):
    await asyncio.sleep(3600)


@handler(timeout=0.3)
def slow_sync(job):
    job.wait_cancelled(30)
    return {"cancelled": job.cancelled}
