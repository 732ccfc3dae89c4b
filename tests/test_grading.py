"""The reference grader on tricky cases, and parsing teacher-written quiz items."""

from __future__ import annotations

import pytest

from quiz.grading import grade_reference, normalise
from quiz.items import cloze_items, control_set, is_grounded, parse_items


@pytest.mark.parametrize(
    ("answer", "reference", "correct"),
    [
        ("It costs twelve crowns.", "12 crowns", True),
        ("The code is four thousand four hundred seventy-one", "The gate code is 4471.", True),
        ("It is 4,471.", "4471", True),
        ("the mayor is ADA QUILL!", "Ada Quill", True),
        ("The mayor is Ada.", "Ada Quill", False),
        ("It costs 13 crowns", "12 crowns", False),
        ("Membership is paid every month.", "monthly membership fee", False),
        ("It opened on the third of May", "3 May", True),
        ("Café Noël", "cafe noel", True),
        ("", "Paris", False),
    ],
)
def test_reference_grader(answer, reference, correct):
    assert grade_reference(answer, reference).correct is correct


def test_keywords_with_alternatives():
    assert grade_reference("Seven days", keywords=["7"]).correct
    assert grade_reference("It's the Pacific", keywords=["pacific|pacific ocean"]).correct
    assert not grade_reference("Atlantic", keywords=["pacific"]).correct
    assert grade_reference("Atlantic", keywords=["pacific"]).grader == "keywords"


def test_no_reference_gives_no_verdict():
    g = grade_reference("anything")
    assert g.correct is None and g.grader == "none"


def test_normalise_numbers_in_words():
    assert normalise("twenty-one and one hundred five") == ["21", "and", "105"]


def test_parse_items_reads_pairs_and_skips_junk():
    text = "Q: What is the gate code of Vellmoor?\nA: 4471\n\nQ1. Who is the mayor?\nA1. Ada Quill\nQ: no question mark\nA: x"
    assert parse_items(text) == [
        {"question": "What is the gate code of Vellmoor?", "answer": "4471"},
        {"question": "Who is the mayor?", "answer": "Ada Quill"},
    ]


def test_control_set_ships_with_the_package():
    items = control_set()
    assert len(items) >= 10 and all(i["keywords"] for i in items)


def test_items_whose_answer_is_not_in_the_notes_are_hallucinations():
    notes = "The ferry leaves at 7 o'clock and the crossing takes 40 minutes. The lighthouse is the Tallow Lamp."
    assert is_grounded("40 minutes", notes) and is_grounded("the Tallow Lamp", notes)
    assert not is_grounded("4 hours", notes) and not is_grounded("Ada Quill", notes)


def test_cloze_items_blank_the_last_name_or_number_of_each_sentence():
    items = cloze_items("The mayor of Vellmoor is Ada Quill. The crossing takes 40 minutes. too short.", "Vellmoor")
    assert [i["answer"] for i in items] == ["Ada Quill", "40 minutes"]
    assert items[0]["question"] == "About Vellmoor, fill in the blank: The mayor of Vellmoor is ___?"
