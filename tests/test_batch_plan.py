import pytest

from chartwiz.batch.plan import Job, answer_order, pending_questions, plan_pass
from chartwiz.batch.questions import Question
from chartwiz.errors import ChartWizValueError


def conversation(record_id, references, record=0):
    """The questions of one record, turn k after turns 1..k-1, with the given reference answers (None: none)."""
    questions, history = [], []
    for turn, reference in enumerate(references, start=1):
        text = f"{record_id} 질문 {turn}?"
        questions.append(
            Question(
                id=record_id,
                turn=turn,
                question=text,
                image=f"{record_id}.png",
                history=tuple(history),
                reference=reference,
                source=f"q.jsonl:{record + 1}",
                record=record,
            )
        )
        history.append((turn, text, reference))
    return questions


def test_resume_skips_the_questions_whose_result_still_holds():
    questions = conversation("a", ["1"]) + conversation("b", ["2", "3"], record=1)
    pending, already_done = pending_questions(questions, done={("a", 1), ("b", 2)})
    assert [question.key for question in pending] == [("b", 1)]
    assert already_done == 2


def test_a_key_twice_among_the_questions_to_answer_is_refused_unless_done():
    twice = conversation("a", ["1"]) + conversation("a", ["1"], record=1)
    with pytest.raises(ChartWizValueError, match="id 'a' turn 1 appears twice"):
        pending_questions(twice, done=set())
    assert pending_questions(twice, done={("a", 1)}) == ([], 2)


def test_a_marked_repeat_is_answered_once_and_the_repeat_is_a_bad_record():
    first = conversation("a", ["1"])[0]
    repeat = Question(
        id="a",
        turn=1,
        question=first.question,
        source="q.jsonl:2",
        record=1,
        error="appears again",
        repeats="q.jsonl:1",
    )
    pending, _ = pending_questions([first, repeat], done=set())
    plan = plan_pass(pending, answers={}, failed=set(), context="reference")
    assert [job.question for job in plan.jobs] == [first]
    assert plan.errors == [(repeat, "record", "appears again")] and plan.waiting == []
    assert repeat.key == (None, 1, "q.jsonl:2") != first.key


def test_model_context_answers_a_conversation_turn_by_turn():
    questions = conversation("a", ["1", "2", None])
    first = plan_pass(questions, answers={}, failed=set(), context="model")
    assert [job.question.turn for job in first.jobs] == [1]
    assert [question.turn for question in first.waiting] == [2, 3]
    second = plan_pass(first.waiting, answers={("a", 1): "모델 1"}, failed=set(), context="model")
    assert [(job.question.turn, job.history) for job in second.jobs] == [(2, [("a 질문 1?", "모델 1")])]
    assert [question.turn for question in second.waiting] == [3]


def test_reference_context_answers_every_turn_at_once_and_waits_only_where_a_reference_is_missing():
    questions = conversation("a", ["1", "2", "3"]) + conversation("b", [None, "5"], record=1)
    plan = plan_pass(questions, answers={}, failed=set(), context="reference")
    assert [job.question.key for job in plan.jobs] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert plan.jobs[2].history == [("a 질문 1?", "1"), ("a 질문 2?", "2")]
    assert [question.key for question in plan.waiting] == [("b", 2)] and plan.errors == []


def test_a_turn_whose_context_failed_or_is_missing_is_a_context_error():
    questions = conversation("a", [None, None])
    after_failure = plan_pass(questions[1:], answers={}, failed={("a", 1)}, context="model")
    assert after_failure.errors == [
        (questions[1], "context", "turn 1, context of this one, has no answer (see its error)")
    ]
    missing = plan_pass(questions[1:], answers={}, failed=set(), context="model")
    assert missing.errors[0][2] == "turn 1, context of this one, has no answer and is not in the input"
    assert missing.jobs == [] and missing.waiting == []


def test_jobs_go_longest_prompt_first_then_in_input_order():
    questions = conversation("a", ["1", "2"]) + conversation("b", ["3"], record=1) + conversation("c", ["4"], record=2)
    jobs = [Job(question, [], prompt_tokens) for question, prompt_tokens in zip(questions, (10, 30, 20, 10))]
    assert [job.question.key for job in answer_order(jobs)] == [("a", 2), ("b", 1), ("a", 1), ("c", 1)]
