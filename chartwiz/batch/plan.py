"""
Which questions a run answers, when and in which order, decided from the questions and the results so far alone (no
model, no files), so that resuming, duplicates and multi-turn context can be checked without either.
"""

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field

from chartwiz.errors import ChartWizValueError

from .questions import Question


@dataclass
class Job:
    """A question to answer now, with the `(question, answer)` turns given to the model before it."""

    question: Question
    history: list[tuple[str, str]]
    prompt_tokens: int = 0  # set by the context check, for `answer_order`


@dataclass
class PassPlan:
    """
    One pass over the questions left: `jobs` can be answered now; `waiting` need the model's answer to an earlier turn
    that this run has yet to give; `errors` are `(question, kind, reason)` triples of questions that cannot be asked.
    """

    jobs: list[Job] = field(default_factory=list)
    waiting: list[Question] = field(default_factory=list)
    errors: list[tuple[Question, str, str]] = field(default_factory=list)


def pending_questions(questions: Sequence[Question], done: Container) -> tuple[list[Question], int]:
    """
    The questions still to answer, in input order, and how many are done already (their key is in `done`: an earlier
    run answered them or recorded their error, and that result still holds). A key that comes twice among the
    questions to answer is refused: its second answer would hide the first (readers mark such repeats themselves).
    """
    pending, seen, already_done = [], set(), 0
    for question in questions:
        if question.key in done:
            already_done += 1
        elif question.key in seen:
            raise ChartWizValueError(
                f"{question.source}: id {question.id!r} turn {question.turn} appears twice in the input"
            )
        else:
            seen.add(question.key)
            pending.append(question)
    return pending, already_done


def plan_pass(pending: Sequence[Question], answers: Mapping[tuple, str], failed: Container, context: str) -> PassPlan:
    """
    Sorts the questions left into a pass's jobs, those that wait for a later pass and those that cannot be asked.

    Args:
        pending (`list[Question]`): the questions left, all of them asked in this run.
        answers (`dict`): key -> answer, of earlier runs and earlier passes.
        failed (`set`): the keys of questions with an error row.
        context (`str`): `"reference"` gives an earlier turn's reference answer as its context where the input has
            one, and the model's own answer otherwise; `"model"` always waits for the model's own answer.
    """
    in_run = {question.key for question in pending}
    plan = PassPlan()
    for question in pending:
        if question.error:
            plan.errors.append((question, "record", question.error))
            continue
        history, missing = [], None
        for turn, asked, reference in question.history:
            if context == "reference" and reference is not None:
                history.append((asked, reference))
            elif (question.id, turn) in answers:
                history.append((asked, answers[(question.id, turn)]))
            else:
                missing = turn
                break
        if missing is None:
            plan.jobs.append(Job(question, history))
        elif (question.id, missing) in in_run and (question.id, missing) not in failed:
            plan.waiting.append(question)
        else:
            reason = f"turn {missing}, context of this one, has no answer" + (
                " (see its error)" if (question.id, missing) in failed else " and is not in the input"
            )
            plan.errors.append((question, "context", reason))
    return plan


def answer_order(jobs: Sequence[Job]) -> list[Job]:
    """
    The jobs longest prompt first (then in input order), so that a batch wastes little on padding and memory runs
    out, if it does, at the start.
    """
    return sorted(jobs, key=lambda job: (-job.prompt_tokens, job.question.record, job.question.turn or 0))


__all__ = ["Job", "PassPlan", "answer_order", "pending_questions", "plan_pass"]
