"""Submit a job so that retrying never makes a second one: the same Idempotency-Key and body return the same job.

python examples/clients/idempotent_submit.py http://127.0.0.1:8000/v2/local [API_KEY]

A client that loses the reply (a timeout, a dropped connection) sends the same request again with the same key and
gets the job the first one made (``Idempotent-Replayed: true``); the same key with another body is a 422.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any


def post(url: str, body: dict[str, Any], key: str, api_key: str | None) -> tuple[int, dict[str, Any], bool]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": f'"{key}"'}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers.get("Idempotent-Replayed") == "true"
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), False


def main(base: str, api_key: str | None = None) -> int:
    key = str(uuid.uuid4())  # one key per logical submit, kept across its retries
    body = {"input": {"prompt": "hello"}}
    _, first, _ = post(f"{base}/run", body, key, api_key)
    _, again, replayed = post(f"{base}/run", body, key, api_key)  # the "retry"
    code, err, _ = post(f"{base}/run", {"input": {"prompt": "something else"}}, key, api_key)
    print(json.dumps({"first": first["id"], "retry": again["id"], "replayed": replayed, "other_body": code}))
    print(err["error"], file=sys.stderr)
    return 0 if first["id"] == again["id"] and replayed and code == 422 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
