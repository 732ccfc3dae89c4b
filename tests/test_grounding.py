"""Keeping a small grounded teacher honest, and turning its check questions into question-answer examples."""

from __future__ import annotations

import pytest

from lessons.guards import copied_phrases, end_at_question, key_terms, missing_key_terms, ungrounded_terms
from lessons.prompts import SCAFFOLD, check_question
from trainer.dataset import question_examples

NOTES = "Vellmoor is a small island town in the Quiet Sea. About 2,300 people live there. The mayor is Ada Quill."


def test_numbers_and_names_missing_from_the_notes_are_flagged():
    assert ungrounded_terms("Vellmoor lies in the Pacific Ocean and 5,800 people live there.", NOTES) == [
        "5,800", "Pacific", "Ocean"]


def test_facts_from_the_notes_pass_whatever_their_formatting():
    reply = "The town of Vellmoor has 2300 people. Its mayor is Ada Quill. She lives in the Quiet Sea town."
    assert ungrounded_terms(reply, NOTES) == []


def test_capitalised_words_opening_a_sentence_are_not_names():
    assert ungrounded_terms("The mayor is kind. She smiles. I agree.", NOTES) == []


def test_an_explanation_skipping_the_notes_facts_is_caught():
    assert key_terms(NOTES) == ["2,300", "Quiet", "Sea", "Ada", "Quill"]
    assert missing_key_terms("Vellmoor is a lovely town by the sea.", NOTES) == ["2,300", "Quiet", "Ada", "Quill"]
    assert missing_key_terms("2300 people live in Vellmoor, in the Quiet Sea; Ada Quill is mayor.", NOTES) == []


def test_the_check_question_is_the_last_question_of_the_explanation():
    turn = "Vellmoor has 2,300 people. Is that many? Not really.\n**How many people live in Vellmoor?**"
    assert check_question(turn) == "How many people live in Vellmoor?"
    assert check_question("Vellmoor is small. That is all.") is None
    assert check_question("The ferry leaves at 7. Question: When does it leave?") == "When does it leave?"
    assert check_question("The ferry leaves at 7. Q2) When does it leave?") == "When does it leave?"


def _turn(tid, role, kind, content, speaker="prof"):
    return {"id": tid, "role": role, "kind": kind, "content": content, "speaker": speaker, "section": 0}


TURNS = [
    _turn(1, "teacher", "explain", "About 2,300 people live in Vellmoor. How many people live there?"),
    _turn(2, "student", "reply", "Maybe 10?", speaker="kid"),
    _turn(3, "teacher", "correct", "Not quite. About 2,300 people live in Vellmoor."),
]


def test_a_check_question_becomes_a_direct_question_answered_by_the_correction_without_its_verdict():
    [messages] = question_examples(TURNS, "Kid", excluded=set(), blocked=set())
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "How many people live there?"
    assert messages[2]["content"] == "About 2,300 people live in Vellmoor." and messages[2]["train"] is True


def test_the_students_own_question_and_the_teachers_answer_become_a_second_pair():
    turns = [*TURNS, _turn(4, "student", "ask", "Who is the mayor of Vellmoor?", speaker="kid"),
             _turn(5, "teacher", "answer", "The mayor of Vellmoor is Ada Quill.")]
    pairs = question_examples(turns, "Kid", excluded=set(), blocked=set())
    assert [(m[1]["content"], m[2]["content"], m[2]["turn_id"]) for m in pairs] == [
        ("How many people live there?", "About 2,300 people live in Vellmoor.", 3),
        ("Who is the mayor of Vellmoor?", "The mayor of Vellmoor is Ada Quill.", 5)]
    assert [m[2]["turn_id"] for m in question_examples(turns, "Kid", excluded={3}, blocked=set())] == [5]


def test_no_question_example_from_a_voted_down_or_blocked_correction():
    assert question_examples(TURNS, "Kid", excluded={3}, blocked=set()) == []
    assert question_examples(TURNS, "Kid", excluded=set(), blocked={"prof"}) == []


def test_an_explanation_ends_at_its_check_question():
    turn = "The ferry leaves at 7. Question: When does the ferry leave? Answer: At 7. Q: And the lighthouse? A: Green."
    assert end_at_question(turn) == "The ferry leaves at 7. Question: When does the ferry leave?"
    assert end_at_question("Why ferries? They float. Fine.") == "Why ferries? They float. Fine."  # no statement first
    assert end_at_question("The ferry leaves at 7.") == "The ferry leaves at 7."


def test_a_reply_copying_its_prompts_wording_is_caught():
    assert copied_phrases("Right. I answered: the ferry. Check my answer against the notes.", SCAFFOLD) == [
        "i answered:", "check my answer"]
    assert copied_phrases("The ferry leaves at 7 and the mayor answered questions.", SCAFFOLD) == []


def test_the_repetition_penalty_spares_the_prompt_so_a_teacher_can_quote_its_notes():
    import torch

    from backends.local.generation import ReplyRepetitionPenalty

    scores = torch.tensor([[2.0, 2.0, 2.0, -2.0, 2.0]])
    prompt_and_reply = torch.tensor([[0, 1, 3, 4]])  # prompt: tokens 0 and 1; reply so far: 3 and 4
    out = ReplyRepetitionPenalty(2.0, prompt_len=2)(prompt_and_reply, scores.clone())
    assert out.tolist() == [[2.0, 2.0, 2.0, -4.0, 1.0]]
    assert ReplyRepetitionPenalty(2.0, prompt_len=4)(prompt_and_reply, scores.clone()).tolist() == scores.tolist()


def test_notes_support_is_the_share_of_a_replys_content_words_found_in_the_notes():
    from lessons.guards import notes_support

    assert notes_support("About 2,300 people live in Vellmoor, in the Quiet Sea.", NOTES) == 1.0
    invented = "Vellmoor has been around for centuries and is known for its unique blend of traditions."
    assert notes_support(invented, NOTES) < 0.3
    assert notes_support("Yes!", NOTES) == 1.0  # nothing to check


@pytest.mark.parametrize("correction", [
    # strays: most of its words are not in the notes
    "Vellmoor has been around for centuries and is known for its unique blend of traditions.",
    # mostly the notes' own words (notes_support passes), but with an invented hall and year
    "About 2,300 people live in Vellmoor, in the Quiet Sea, and the mayor Ada Quill built the Main Hall in 3957.",
], ids=["strays", "invents"])
def test_a_grounded_teacher_turn_that_strays_or_invents_stays_as_context_but_is_not_trained(tmp_path, correction):
    from storage import lessons as lq
    from storage import open_db
    from trainer.dataset import lesson_examples

    db = open_db(tmp_path / "c.db")
    lid = lq.create_lesson(db, topic="Vellmoor", teachers=["prof"], students=["kid"], max_turns=3, source_id=None)
    lq.set_syllabus(db, lid, [{"title": "The town", "text": NOTES}])
    for role, content in (("teacher", "About 2,300 people live in Vellmoor. How many people live there?"),
                          ("student", "Maybe ten thousand?"), ("teacher", correction)):
        lq.add_turn(db, lesson_id=lid, speaker="prof" if role == "teacher" else "kid", role=role, content=content, section=0)
    [conversation] = lesson_examples(db, lid)  # the check question's pair is gone with its correction
    trained = {m["content"]: m["train"] for m in conversation["messages"] if m["role"] == "assistant"}
    assert trained == {"About 2,300 people live in Vellmoor. How many people live there?": True, correction: False}


def test_each_question_round_of_a_section_becomes_its_own_pair():
    turns = [*TURNS,
             _turn(4, "student", "ask", "In which sea is Vellmoor?", speaker="kid"),
             _turn(5, "teacher", "answer", "Vellmoor is in the Quiet Sea."),
             _turn(6, "student", "ask", "Who is the mayor?", speaker="kid"),
             _turn(7, "teacher", "answer", "The mayor is Ada Quill.")]
    pairs = question_examples(turns, "Kid", excluded={5}, blocked=set())
    assert [(m[1]["content"], m[2]["content"]) for m in pairs] == [
        ("How many people live there?", "About 2,300 people live in Vellmoor."),
        ("Who is the mayor?", "The mayor is Ada Quill.")]  # round one's answer was voted down: its pair is gone


def test_an_answer_is_checked_against_the_notes_sentence_that_answers_the_question():
    from lessons.guards import answering_sentence, unanswered_terms

    notes = "Vellmoor has one school, the Driftwood School, with 140 pupils. Most islanders work with seaweed."
    question = "What is the name of the school?"
    source = answering_sentence(question, notes)
    assert source == "Vellmoor has one school, the Driftwood School, with 140 pupils."
    assert unanswered_terms("The school is called Vellmoor.", question, source) == ["140", "Driftwood"]
    assert unanswered_terms("It is the Driftwood School; 140 pupils go there.", question, source) == []
    assert answering_sentence("What colour is the sky?", notes) is None  # nothing in the notes is about it
    mayor = "The mayor of Vellmoor is Ada Quill. She was elected in 2019 and she used to be a beekeeper."
    assert answering_sentence("Who was elected to be a beekeeper?", mayor) == mayor  # "She" needs its sentence before
