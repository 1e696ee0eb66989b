from handler_sdk import handler


@handler
def boom(job):
    raise ValueError(f"boom: {job.input.get('why', 'no reason')}")
