"""Results that could not be delivered wait on disk and are re-sent, also after a worker restart.

One file per result, written to a temp name and renamed, so a crash never leaves half a result behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import codec
from ..models import JobStatus
from ..runner import Outcome

__all__ = ["Spool"]

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)
        return self.dir / f"{safe}.json"

    def save(self, job_id: str, outcome: Outcome) -> None:
        record = {
            "job_id": job_id,
            "status": outcome.status.value,
            "output": None if outcome.output is None else codec.Fragment(outcome.output),
            "has_output": outcome.output is not None,
            "error": outcome.error,
            "error_details": outcome.error_details,
        }
        path = self._path(job_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(codec.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.warning("result of job %s spooled to %s until the endpoint takes it", job_id, path)

    def pending(self) -> list[tuple[str, Outcome, Path]]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                rec = codec.loads(path.read_bytes())
            except (OSError, ValueError):
                log.exception("unreadable spooled result %s left in place", path)
                continue
            output = codec.dumps(rec["output"]) if rec.get("has_output") else None
            outcome = Outcome(JobStatus(rec["status"]), output, rec.get("error"), rec.get("error_details"))
            out.append((rec["job_id"], outcome, path))
        return out

    def ids(self) -> list[str]:
        return [job_id for job_id, _, _ in self.pending()]

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)
