"""The job state machine allows exactly the moves of DESIGN section 2, and nothing else."""

import itertools

import pytest

from handler_sdk.errors import HTTPError, StateError
from handler_sdk.lifecycle import TRANSITIONS, IllegalTransition, check
from handler_sdk.models import JobStatus
from handler_sdk.serve.http.router import refused_status

Q, P, C, F, X, T = (
    JobStatus.IN_QUEUE,
    JobStatus.IN_PROGRESS,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.TIMED_OUT,
)

# Written out from the contract, independently of lifecycle.TRANSITIONS.
ALLOWED = {
    (Q, P): "a worker takes the job",
    (Q, X): "/cancel of a queued job",
    (Q, T): "policy.ttl runs out while queued",
    (P, C): "the handler finished",
    (P, F): "the handler failed (or the job was lost too often)",
    (P, X): "/cancel of a running job",
    (P, T): "executionTimeout or ttl ran out",
    (P, Q): "the lease lapsed (worker died) or the worker handed the job back",
    (F, Q): "/retry",
    (T, Q): "/retry",
}

PAIRS = list(itertools.product(JobStatus, repeat=2))


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_check_allows_exactly_the_contracts_transitions(old: JobStatus, new: JobStatus) -> None:
    if (old, new) in ALLOWED:
        check(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"job is {old}; it cannot become {new}"):
            check(old, new)


def test_transitions_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize("status", [C, X])
def test_completed_and_cancelled_are_final(status: JobStatus) -> None:
    assert TRANSITIONS[status] == frozenset()


def test_terminal_statuses_only_move_back_to_the_queue() -> None:
    for s in JobStatus:
        if s.terminal:
            assert TRANSITIONS[s] <= {Q}


def test_no_status_transitions_to_itself() -> None:
    for s in JobStatus:
        assert s not in TRANSITIONS[s]


def test_an_illegal_transition_is_a_state_error_that_the_router_answers_409() -> None:
    assert issubclass(IllegalTransition, StateError)
    assert not issubclass(IllegalTransition, HTTPError), "the state machine knows no HTTP"
    with pytest.raises(IllegalTransition) as e:
        check(JobStatus.COMPLETED, JobStatus.IN_PROGRESS)
    assert refused_status(e.value) == 409
