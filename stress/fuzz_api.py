"""``python -m stress.fuzz_api [--examples N] [--seed S]``: the long schemathesis run against serve.

Every phase (examples, coverage, fuzzing, and stateful, which follows the document's links from /run's id to
/status, /cancel, /retry...), with N examples per operation (default 200: 6,434 cases in about 7 minutes on a busy
2-core machine), and the checks of the bounded CI run (tests/test_openapi.py). Serve runs in this process with the
echo handler, the worker routes' hold at 0, ?wait= bounded to 1 s and the dashboard's events stream ending after
half a second, so no request can hang. Exits with schemathesis's status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from handler_sdk.loader import load_handler
from handler_sdk.serve.http.client import ClientLimits
from handler_sdk.serve.server import ServeConfig, Server

ROOT = Path(__file__).resolve().parent.parent
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "response_headers_conformance"
)


async def main(examples: int, seed: int) -> int:
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp:
        cfg = ServeConfig(port=0, data_dir=Path(tmp), rate_limits=False, take_hold_s=0, api_key="k",
                          dashboard_events_s=0.5)  # fmt: skip
        cfg.client = ClientLimits(default_wait_ms=1000, max_wait_ms=1000, stream_hold_ms=0)
        server = Server(cfg, load_handler(str(ROOT / "tests" / "handlers" / "echo_async.py")))
        await server.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
                "run", f"http://127.0.0.1:{server.port}/openapi.json", "-H", "Authorization: Bearer k",
                "--checks", CHECKS, "--workers", "1", "--request-timeout", "5", "--seed", str(seed),
                "--max-examples", str(examples), "--no-color",
            )  # fmt: skip
            return await proc.wait()
        finally:
            await server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m stress.fuzz_api", description=__doc__)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args()
    sys.exit(asyncio.run(main(args.examples, args.seed)))
