from handler_sdk import handler


@handler
async def echo(job):
    return job.input
