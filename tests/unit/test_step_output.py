"""A step's output reaches each worker as one TokenDeltas with exactly its requests' rows."""

from __future__ import annotations

from engine.scheduling.request import Request
from engine.step_output import NO_LOGPROBS, StepOutput
from shared.sampling import FinishReason, SamplingParams, TokenLogprob


def _request(rid: int, finish: FinishReason = FinishReason.NONE) -> Request:
    request = Request(rid, [1, 2, 3][:rid % 3 + 1], SamplingParams(), seed=0, eos_token_ids=frozenset())
    request.finish_reason = finish
    return request


def test_each_worker_gets_its_own_rows_in_order_and_unknown_requests_are_left_out():
    logprob = TokenLogprob(7, -0.5, [7], [-0.5])
    output = StepOutput([_request(0), _request(1, FinishReason.LENGTH), _request(2), _request(3)],
                        [[10], [11], [12], [13]], [NO_LOGPROBS, [logprob], NO_LOGPROBS, NO_LOGPROBS])
    output.requests[1].error, output.requests[1].error_code = "the engine failed", 500
    messages = output.deltas_by_worker({0: 5, 1: 6, 2: 5})  # request 3 belongs to no worker
    assert sorted(messages) == [5, 6]
    assert messages[5].rids == [0, 2] and messages[5].new_ids == [[10], [12]]
    assert messages[5].num_prompt_tokens == [1, 3] and messages[5].finish == [0, 0]
    assert messages[6].rids == [1] and messages[6].finish == [int(FinishReason.LENGTH)]
    assert messages[6].logprobs == [[logprob]] and messages[6].errors == ["the engine failed"]
    assert messages[6].error_codes == [500] and messages[5].error_codes == [0, 0]


def test_one_worker_gets_every_row_and_finished_requests_without_a_token_are_added_once():
    output = StepOutput([_request(0), _request(1)], [[10], [11]], [NO_LOGPROBS, NO_LOGPROBS])
    aborted = _request(2, FinishReason.ABORT)
    output.add_finished([output.requests[1], aborted])
    assert [r.rid for r in output.requests] == [0, 1, 2] and output.new_ids[2] == []
    message = output.deltas_by_worker({0: 1, 1: 1, 2: 1})[1]
    assert message.rids == [0, 1, 2] and message.finish == [0, 0, int(FinishReason.ABORT)]
    assert output.num_new_tokens == 2
    assert StepOutput([_request(0)], [[1]], [NO_LOGPROBS]).deltas_by_worker({}) == {}
