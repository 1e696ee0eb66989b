"""A job whose webhook hears every event: start, progress, output (stream items) and completed.

python -m handler_sdk.serve examples/webhooks.py --test-input '{"input": {"steps": 3}}'

Signed webhooks (Standard Webhooks), with the receiver in examples/clients/webhook_receiver.py:

export HANDLER_SDK_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
python examples/clients/webhook_receiver.py --port 9000 &
python -m handler_sdk.serve examples/webhooks.py &
curl -s localhost:8000/v2/local/run -d '{"input": {"steps": 3}, "webhook": "http://127.0.0.1:9000/hook",
  "webhookEvents": ["start", "progress", "output", "completed"]}'
"""

import time

from handler_sdk import handler


@handler
def count(job):
    steps = int(job.input.get("steps", 5))
    for step in range(steps):
        time.sleep(0.05)
        job.progress({"step": step + 1, "of": steps})  # a "progress" event (the latest, if they come fast)
        yield {"step": step + 1}  # an "output" event carries the stream items not yet sent
