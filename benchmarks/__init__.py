"""handler_sdk's benchmarks: overhead and throughput as ratios against yardsticks measured in the same run.

Run them all with ``python -m benchmarks`` (under 20 minutes on two cores); see ``benchmarks/RESULTS.md``.
Each module is one benchmark with a ``run(Run) -> Section`` function:

* ``runsync``: /runsync round trip with a no-op handler vs a bare aiohttp server and runpod-python's local server;
* ``drain``: external workers draining a pre-loaded queue over HTTP vs the store's own ceiling;
* ``streaming``: token streaming through the whole stack vs vLLM's own OpenAI server;
* ``chunker``: packing stream items vs plain ``orjson.dumps``;
* ``footprint``: worker start-up, idle memory and import time.
"""
