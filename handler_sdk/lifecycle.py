"""The job state machine: which status may follow which.

Statuses move forward. The two moves back are a lapsed lease (IN_PROGRESS -> IN_QUEUE, the worker died) and an
explicit /retry (FAILED or TIMED_OUT -> IN_QUEUE). A terminal status is otherwise final: the first result wins.
"""

from __future__ import annotations

from .errors import IllegalTransition
from .models import JobStatus

__all__ = ["TRANSITIONS", "IllegalTransition", "check"]

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.IN_QUEUE: frozenset({S.IN_PROGRESS, S.CANCELLED, S.TIMED_OUT}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.IN_QUEUE}),
    S.FAILED: frozenset({S.IN_QUEUE}),
    S.TIMED_OUT: frozenset({S.IN_QUEUE}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}


def check(old: JobStatus, new: JobStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"job is {old}; it cannot become {new}")
