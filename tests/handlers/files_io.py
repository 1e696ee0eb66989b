"""Handlers that return, yield and download files, for the file tests."""

from handler_sdk import File, files, handler


@handler(concurrency=4)
async def returns_file(job):
    inp = job.input
    if "path" in inp:
        return {"image": File(inp["path"]), "n": 1}
    return File(inp["text"].encode(), content_type="text/plain")


@handler(concurrency=4)
async def streams_files(job):
    for i in range(job.input.get("n", 2)):
        yield {"i": i, "file": File(f"item {i}".encode(), content_type="text/plain", name=f"item{i}.txt")}


@handler(concurrency=4)
async def big_output(job):
    return {"blob": "x" * job.input["n"]}


@handler(concurrency=4)
def downloads(job):
    path = files.download(job.input["url"], max_bytes=job.input.get("max_bytes", 1 << 20))
    return {"path": str(path), "text": path.read_text()}


@handler(concurrency=4)
async def downloads_async(job):
    path = await files.download_async(job.input["url"])
    return {"path": str(path), "text": path.read_text()}
