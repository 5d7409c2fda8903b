"""The winner rule of redundant steps (`weft_core.replicas.decide`): a function of the
commit order of the replicas' results, stable once decided."""

from __future__ import annotations

import itertools

import pytest

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.replicas import Redundancy, Round, decide, parse_replica_item, replica_item

Attempt = run_pb2.Attempt
FIRST3 = Redundancy(3, False, None)
MAJORITY3 = Redundancy(3, True, None)


def result(replica: int, state: int = Attempt.STATE_SUCCEEDED, out: str = "sha256:aa") -> Attempt:
    attempt = Attempt(number=1, replica=replica, state=state)  # type: ignore[arg-type]
    if state == Attempt.STATE_SUCCEEDED:
        attempt.output_digests["out"] = out
    return attempt


def round_of(*results: Attempt, planned: int = 3) -> Round:
    return Round(1, planned=planned, results=[(100 + i, r) for i, r in enumerate(results)])


def test_item_names_round_trip_and_never_parse_a_step_name() -> None:
    assert parse_replica_item(replica_item("train", 2, 3)) == ("train", 2, 3)
    assert parse_replica_item("train") is None
    assert parse_replica_item("train#x.1") is None


def test_policy_of_a_step() -> None:
    step = pipeline_pb2.Step(name="a")
    assert Redundancy.of(step) is None
    step.redundancy.replicas = 1
    assert Redundancy.of(step) is None
    step.redundancy.hedge_after.seconds = 2
    assert Redundancy.of(step) == Redundancy(1, False, 2.0)
    assert Redundancy(1, False, 2.0).launched_at_once == 1
    assert Redundancy(5, True, None).needed == 3


def test_first_takes_the_earliest_success_in_commit_order() -> None:
    decision = decide(FIRST3, round_of(result(2, Attempt.STATE_FAILED), result(3), result(1)))
    assert decision is not None
    assert decision.outcome == "won"
    assert decision.winner is not None
    assert decision.winner.replica == 3
    assert decision.reason == "first success at revision 101 (replica 3 of 3)"


def test_first_stays_open_until_every_replica_failed() -> None:
    assert decide(FIRST3, round_of(result(1, Attempt.STATE_FAILED))) is None
    failed = decide(FIRST3, round_of(*(result(r, Attempt.STATE_FAILED) for r in (1, 2, 3))))
    assert failed is not None
    assert failed.outcome == "failed"
    assert failed.reason.startswith("no replica succeeded (replica 1: failed")


def test_a_lost_replica_makes_an_undecidable_attempt_lost_not_failed() -> None:
    lost = round_of(result(1, Attempt.STATE_LOST), *(result(r, Attempt.STATE_FAILED) for r in (2, 3)))
    decision = decide(FIRST3, lost)
    assert decision is not None
    assert decision.outcome == "lost"


def test_majority_commits_once_a_majority_agrees() -> None:
    assert decide(MAJORITY3, round_of(result(1))) is None
    decision = decide(MAJORITY3, round_of(result(1, out="sha256:bb"), result(2), result(3)))
    assert decision is not None
    assert decision.outcome == "won"
    assert decision.winner is not None
    assert decision.winner.replica == 2
    assert decision.reason.startswith("2 of 3 replicas agree on out=sha256:aa… at revision 102")


def test_majority_fails_with_every_digest_when_no_majority_is_possible() -> None:
    # Two disagree: the third could still side with either.
    assert decide(MAJORITY3, round_of(result(1, out="sha256:01"), result(2, out="sha256:02"))) is None
    five = Redundancy(5, True, None)
    split = round_of(
        result(1, out="sha256:01"),
        result(2, out="sha256:02"),
        result(3, Attempt.STATE_FAILED),
        result(4, out="sha256:04"),
        planned=5,
    )
    decision = decide(five, split)
    assert decision is not None
    assert decision.outcome == "failed"
    assert decision.reason.startswith("nondeterministic step: replicas disagree, no 3 of 5 agree")
    for listed in ("replica 1: out=sha256:01", "replica 2: out=sha256:02", "replica 3: failed", "replica 4: out="):
        assert listed in decision.reason
    # The fifth replica, never launched, is in the table.
    assert [a.replica for a in decision.table] == [1, 2, 3, 4, 5]
    assert decision.table[4].message == "not launched"


@pytest.mark.parametrize("policy", [FIRST3, MAJORITY3])
def test_a_decision_never_changes_as_later_results_arrive(policy: Redundancy) -> None:
    """Any reader, at any revision after the deciding one, derives the same decision."""
    outcomes = [result(1, out="sha256:01"), result(2), result(3), result(1, Attempt.STATE_FAILED)]
    for order in itertools.permutations(range(3)):
        results = [outcomes[i] for i in order]
        first = None
        for n in range(1, 4):
            decision = decide(policy, round_of(*results[:n]))
            if first is None:
                first = decision
            elif decision is not None:
                assert (decision.outcome, decision.winner, decision.revision) == (
                    first.outcome,
                    first.winner,
                    first.revision,
                )


def test_a_hedge_winning_says_it_overtook_the_first_attempt() -> None:
    decision = decide(Redundancy(1, False, 0.5), round_of(result(2), planned=2))
    assert decision is not None
    assert decision.reason.startswith("hedge overtook attempt 1 after 0.5s")
