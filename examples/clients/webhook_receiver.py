"""A webhook receiver that checks Standard Webhooks signatures and drops repeats by webhook-id.

python examples/clients/webhook_receiver.py --port 9000   (HANDLER_SDK_WEBHOOK_SECRET: the secret serve signs with)

Needs the `standardwebhooks` package (any Standard Webhooks library works the same way).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


def make_app(secret: str, seen: list[dict[str, Any]] | None = None) -> web.Application:
    """The receiver: 401 for a bad signature, 200 for a verified event (a repeat of one is acknowledged, not kept)."""
    verifier = Webhook(secret)
    ids: set[str] = set()
    events = seen if seen is not None else []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            job = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as e:
            return web.json_response({"error": str(e)}, status=401)
        msg_id = request.headers["webhook-id"]
        if msg_id not in ids:  # a retry of an event we already have: say yes again, keep it once
            ids.add(msg_id)
            events.append(job)
            print(json.dumps({"event": job["event"], "id": job["id"], "status": job["status"]}), flush=True)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--secret", default=os.environ.get("HANDLER_SDK_WEBHOOK_SECRET"))
    args = p.parse_args()
    if not args.secret:
        p.error("set HANDLER_SDK_WEBHOOK_SECRET or pass --secret")
    web.run_app(make_app(args.secret), host="127.0.0.1", port=args.port)
