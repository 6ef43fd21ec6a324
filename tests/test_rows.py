"""The one reader of LLaVA `conversations`, and what training rows and `chartwiz infer` each make of its turns."""

import json

import pytest

from chartwiz.batch import questions
from chartwiz.batch.questions import read_question_file
from dataset_builder.aihub import BadRecord
from dataset_builder.rows import conversation_turns, qa_turns


def messages(*pairs):
    return [{"from": speaker, "value": value} for speaker, value in pairs]


def test_every_human_message_is_a_question_and_the_gpt_one_after_it_its_answer():
    assert conversation_turns(messages(("human", "<image>\n가장 큰 값은?"), ("gpt", "A"), ("human", "차이는?"))) == [
        ("가장 큰 값은?", "A"),
        ("차이는?", None),  # a last question without an answer: infer asks it, training skips it
    ]
    # Two questions in a row: the first has no answer.
    assert conversation_turns(messages(("human", "하나?"), ("human", "둘?"), ("gpt", " 2 "))) == [
        ("하나?", None),
        ("둘?", "2"),
    ]
    assert conversation_turns(messages(("human", "값은? <image>"), ("gpt", ""))) == [("값은?", None)]


def test_the_image_marker_is_dropped_only_at_the_start_or_end():
    assert conversation_turns(messages(("human", "앞 <image> 뒤"), ("gpt", "1"))) == [("앞 <image> 뒤", "1")]


@pytest.mark.parametrize(
    "value,reason",
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        (messages(("gpt", "1")), r"conversations\[0\] comes from 'gpt' but does not follow a question"),
        (messages(("human", "?"), ("gpt", "1"), ("gpt", "2")), r"conversations\[2\] comes from 'gpt'"),
        (messages(("human", "?"), ("system", "x")), r"conversations\[1\] is not a"),
        ([{"from": "human", "value": 3}], r"conversations\[0\] is not a"),
    ],
)
def test_a_record_of_another_shape_is_a_bad_record(value, reason):
    with pytest.raises(BadRecord, match=reason):
        conversation_turns(value)


def test_training_turns_need_an_answer_and_a_question_without_an_inner_marker():
    turns = qa_turns(
        {
            "conversations": messages(
                ("human", "값?"), ("gpt", "1"), ("human", "a <image> b"), ("gpt", "2"), ("human", "끝?")
            )
        }
    )
    assert turns[0] == ("값?", "1")
    assert isinstance(turns[1], BadRecord) and "inside its question" in str(turns[1])
    assert isinstance(turns[2], BadRecord) and "no answer" in str(turns[2])
    with pytest.raises(BadRecord, match="missing field 'conversations'"):
        qa_turns({"id": "x"})


def test_a_question_file_and_training_read_one_conversation_by_the_same_rule(tmp_path):
    # Two questions in a row, then an answered one, then a last question without an answer.
    conversation = messages(("human", "<image>\n하나?"), ("human", "둘?"), ("gpt", "2"), ("human", "셋?"))
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"id": "c", "image": "c.png", "conversations": conversation}) + "\n", encoding="utf-8")

    asked = read_question_file(str(path))
    # The question file asks every question, the unanswered ones too, each with the earlier turns as its context.
    assert [(q.turn, q.question, q.reference, q.error) for q in asked] == [
        (1, "하나?", None, None),
        (2, "둘?", "2", None),
        (3, "셋?", None, None),
    ]
    assert asked[2].history == ((1, "하나?", None), (2, "둘?", "2"))
    assert [(q.question, q.reference) for q in asked] == conversation_turns(conversation)
    assert questions.conversation_turns is conversation_turns, "the question file reader is the data layer's"

    # Training needs each answer: the unanswered turns are bad records, the answered one stays a row.
    trained = qa_turns({"conversations": conversation})
    assert isinstance(trained[0], BadRecord) and "turn 1 has a question but no answer" in str(trained[0])
    assert trained[1] == ("둘?", "2")
    assert isinstance(trained[2], BadRecord) and "turn 3 has a question but no answer" in str(trained[2])
