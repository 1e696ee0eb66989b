from handler_sdk import handler


@handler(aggregate_stream=True)
def big(job):
    # One 3 MiB string: split into pieces under the 1 MiB item limit.
    yield "x" * (3 * 1024 * 1024)
    yield {"done": True}
