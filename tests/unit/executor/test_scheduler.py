"""ReadyQueue: which steps are candidates for a claim, as the watches report changes."""

from __future__ import annotations

from weft_executor.scheduler import ReadyQueue

A = ("default", "r1", "a")
B = ("default", "r1", "b")
C = ("default", "r1", "c")


def test_a_ready_step_without_claim_is_a_candidate() -> None:
    queue = ReadyQueue(seed=1)
    queue.ready_added(A)
    assert queue.changed.is_set()
    assert queue.pick(set()) == A
    queue.claimed(A, "other")
    assert queue.pick(set()) is None
    assert queue.owner(A) == "other"


def test_a_vanished_claim_makes_the_step_a_candidate_again_first() -> None:
    queue = ReadyQueue(seed=1)
    for key in (A, B, C):
        queue.ready_added(key)
    queue.claimed(C, "dead-executor")
    queue.changed.clear()
    queue.unclaimed(C)  # its lease expired; the ready mark is still there
    assert queue.changed.is_set()
    assert queue.pick(set()) == C  # taken-over steps go before fresh ones


def test_a_finished_step_is_no_candidate() -> None:
    queue = ReadyQueue(seed=1)
    queue.ready_added(A)
    queue.claimed(A, "me")
    queue.ready_removed(A)
    queue.unclaimed(A)
    assert queue.pick(set()) is None
    assert len(queue) == 0


def test_busy_steps_are_skipped() -> None:
    queue = ReadyQueue(seed=1)
    queue.ready_added(A)
    queue.ready_added(B)
    assert queue.pick({A}) == B
    assert queue.pick({A, B}) is None


def test_resets_replace_the_mirror() -> None:
    queue = ReadyQueue(seed=1)
    queue.ready_added(A)
    queue.reset_ready([B, C])
    queue.reset_claims([(B, "x")])
    assert queue.pick(set()) == C
    queue.reset_claims([])
    assert {queue.pick({C}), queue.pick({B})} == {B, C}


async def test_an_executor_prefers_replicas_of_steps_it_does_not_hold() -> None:
    import asyncio

    from weft_executor.scheduler import SIBLING_GRACE_SECONDS

    queue = ReadyQueue(seed=1)
    own_replica = ("default", "r1", "a#1.2")
    other_replica = ("default", "r1", "b#1.2")
    for key in (own_replica, other_replica):
        queue.ready_added(key)
    holding = {A}  # this executor runs replica 1 of step a
    assert queue.pick(holding) == other_replica
    queue.claimed(other_replica, "me")
    # Only its own step's replica is left: another executor gets the first chance...
    queue.changed.clear()
    assert queue.pick(holding) is None
    # ...and this one takes it once the grace passed (it is woken to look again).
    await asyncio.wait_for(queue.changed.wait(), SIBLING_GRACE_SECONDS * 20)
    assert queue.pick(holding) == own_replica
    assert queue.pick(set()) == own_replica  # an executor not holding step a takes it at once
