"""The smallest handler: returns its input. Try:

python -m handler_sdk.serve examples/echo.py
curl -s -X POST localhost:8000/v2/local/runsync -d '{"input": {"hello": "world"}}'

With --reload, a save of this file restarts the worker on the new code (the queue and results stay):

python -m handler_sdk.serve examples/echo.py --reload

It is also the handler the CPU image runs by default: docker build -t echo-worker .
"""

from handler_sdk import handler


@handler
async def echo(job):
    return job.input
