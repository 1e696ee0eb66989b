"""The smallest handler: returns its input. Try:

python -m handler_sdk.serve examples/echo.py
curl -s -X POST localhost:8000/v2/local/runsync -d '{"input": {"hello": "world"}}'
"""

from handler_sdk import handler


@handler
async def echo(job):
    return job.input
