"""The typed client: run a job, wait for it, read a stream, all as pydantic models.

python -m handler_sdk.serve examples/streaming.py &      # an endpoint on :8000
python examples/client.py http://127.0.0.1:8000/v2
"""

import sys

from handler_sdk.client import Endpoint


def main(base_url: str = "http://127.0.0.1:8000/v2", endpoint_id: str = "local") -> dict:
    with Endpoint(base_url, endpoint_id) as ep:  # api_key=... when serve has --api-key
        print(ep.health().workers)
        job = ep.run({"words": 3})  # retried on 429 and dropped connections, never queued twice
        words = [item.output["word"] for item in ep.stream(job.id)]  # as they are yielded
        done = ep.wait(job.id, timeout=30)  # COMPLETED, FAILED, CANCELLED or TIMED_OUT; timeout=0 checks once
        print(done.status, done.output, words)
        quick = ep.runsync({"words": 1})
        return {"status": done.status.value, "output": done.output, "words": words, "runsync": quick.output}


if __name__ == "__main__":
    main(*sys.argv[1:])
