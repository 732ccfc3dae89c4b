"""Keeping a small grounded teacher honest, and turning its check questions into question-answer examples."""

from __future__ import annotations

import pytest

from lessons.guards import (
    answering_sentence,
    copied_phrases,
    end_at_question,
    key_terms,
    missing_key_terms,
    ungrounded_terms,
)
from lessons.prompts import SCAFFOLD, asked_question, check_question, student_question
from trainer.dataset import about, question_examples

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


def test_a_students_question_keeps_the_questions_that_say_what_it_asks_about():
    assert asked_question("What's the Moth? What kind of kite is it?") == "What's the Moth? What kind of kite is it?"
    assert asked_question("Interesting! Who runs the ferry?") == "Who runs the ferry?"
    assert asked_question("Who runs it? Tell me. When does the ferry leave? I wonder.") == "When does the ferry leave?"
    assert asked_question("Question: How many pupils?") == "How many pupils?"
    assert asked_question("The ferry leaves at 7 o'clock.") is None  # a restated fact asks nothing
    assert asked_question("Why?") is None  # too short to say what it asks


def test_the_student_is_shown_how_a_fact_becomes_a_question_then_given_its_fact():
    messages = student_question("Kid", "Vellmoor", "The mayor of Vellmoor is Ada Quill.")
    assert messages[0]["role"] == "system" and "Kid" in messages[0]["content"]
    shots = messages[1:-1]
    assert [m["role"] for m in shots] == ["user", "assistant"] * (len(shots) // 2) and shots
    assert all(m["content"].endswith("?") for m in shots if m["role"] == "assistant")
    assert not any("Vellmoor" in m["content"] for m in shots)  # the examples teach nothing of the lesson
    assert messages[-1] == {"role": "user", "content": "Fact about Vellmoor: The mayor of Vellmoor is Ada Quill."}


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


def test_a_pairs_question_that_does_not_name_the_lessons_topic_is_asked_about_it():
    pairs = question_examples([*TURNS, _turn(4, "student", "ask", "Who is Vellmoor's mayor?", speaker="kid"),
                               _turn(5, "teacher", "answer", "The mayor is Ada Quill.")],
                              "Kid", excluded=set(), blocked=set(), topic="Vellmoor")
    # asked alone, "How many people live there?" would be about any place the student was taught
    assert [m[1]["content"] for m in pairs] == ["About Vellmoor: How many people live there?", "Who is Vellmoor's mayor?"]
    assert about("What is the opposite of hot?", "what a stock is") == "About what a stock is: What is the opposite of hot?"
    assert about("What is a stock?", "what a stock is") == "What is a stock?"  # "what" and "is" name nothing
    assert about("Which kites sell best?", "Quillfeather Kites") == "About Quillfeather Kites: Which kites sell best?"
    assert about("Which Quillfeather kite sells best?", "Quillfeather Kites") == "Which Quillfeather kite sells best?"


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


def test_an_answer_must_tell_every_fact_of_its_sentence_but_not_the_topic():
    from lessons.steps import Step
    from lessons.syllabus import Section
    from lessons.turn import problems

    notes = ("Quillfeather Kites is a kite company. It was founded in 1987 by twin sisters, Mara and Jessa Holt, "
             "in the village of Dunmere. The factory stands beside Lake Oona.")
    section = Section("History", notes)
    step = Step(role="teacher", speaker="prof", kind="answer", section=0, question_round=1)
    question = "Who founded Quillfeather Kites?"
    source = "Quillfeather Kites is a kite company. It was founded in 1987 by twin sisters, Mara and Jessa Holt, " \
             "in the village of Dunmere."

    def check(answer: str) -> list[str]:
        return problems(answer, step, section, f"Quillfeather Kites\n{notes}", question, source,
                        known="Quillfeather Kites History")

    # three of its four facts were enough before; a student taught this answers "where?" without Dunmere
    assert check("It was founded in 1987 by twin sisters, Mara and Jessa Holt.") == ["left out Dunmere"]
    assert check("Mara and Jessa Holt founded it in 1987, in the village of Dunmere.") == []
    # "Quillfeather" and "Kites" are the topic, and "Lake Oona" is another sentence's: none is asked for
    assert check("Twin sisters, Mara and Jessa Holt, founded it in Dunmere in 1987.") == []


def test_an_answer_from_a_sentence_opening_with_a_pronoun_must_say_who_it_is_about():
    from lessons.steps import Step
    from lessons.syllabus import Section
    from lessons.turn import problems

    notes = "The mayor of Vellmoor is Ada Quill. She was elected in 2019 and she used to be a beekeeper."
    step = Step(role="teacher", speaker="prof", kind="answer", section=0, question_round=1)
    source = answering_sentence("When was she elected?", notes, known="Vellmoor The mayor")
    assert source == notes

    def check(answer: str) -> list[str]:
        return problems(answer, step, Section("The mayor", notes), f"Vellmoor\n{notes}", "When was she elected?",
                        source, known="Vellmoor The mayor")

    # true, but a student taught it can't tell whose election a question about the mayor means
    assert check("She was elected in 2019 and she used to be a beekeeper.") == ["left out Ada", "left out Quill"]
    assert check("Ada Quill was elected in 2019 and used to be a beekeeper.") == []


def test_an_answer_mixing_in_another_sentences_facts_is_caught():
    from lessons.guards import other_facts

    notes = ("Vellmoor has one school, the Driftwood School, with 140 pupils. Most islanders work with seaweed: "
             "the island's main export is blue seaweed, which is dried on the beaches.")
    school = "Vellmoor has one school, the Driftwood School, with 140 pupils."
    asked = "What's the Driftwood School? Vellmoor"
    wrong = "Vellmoor is a school of 140 students that grows seaweed, its main export."
    assert other_facts(wrong, asked, school, notes) == ["seaweed", "main", "export"]
    assert other_facts("It is Vellmoor's one school, with 140 pupils.", asked, school, notes) == []
    # words of no sentence are not "other facts" (inventions are ungrounded_terms' and notes_support's)
    assert other_facts("The Driftwood School is a lovely place with 140 happy pupils.", asked, school, notes) == []


def test_the_answering_sentence_ignores_the_topic_and_prefers_the_rounds_sentence_on_a_tie():
    from lessons.guards import answering_sentence

    notes = "Vellmoor is a small island town in the Quiet Sea. About 2,300 people live there."
    question = "What's the number of people living in Vellmoor?"
    assert answering_sentence(question, notes, known="Vellmoor") == "About 2,300 people live there."
    assert answering_sentence(question, notes) == "Vellmoor is a small island town in the Quiet Sea."  # 1–1 tie
    canned = "What else should I remember about Vellmoor?"
    assert answering_sentence(canned, notes, known="Vellmoor") is None
    assert answering_sentence(canned, notes, "Vellmoor", prefer="About 2,300 people live there.") == \
        "About 2,300 people live there."


def test_a_name_with_a_number_is_the_name_not_the_name_and_a_dash():
    notes = "Quillfeather's best-selling kite is the Comet-9, a red box kite."
    assert key_terms(notes) == ["9", "Comet"]
    assert ungrounded_terms("The Comet-9 is red.", notes) == []
    assert missing_key_terms("The Comet-9 is red.", notes) == []


def test_a_canned_question_asks_about_a_name_its_sentence_gives_beyond_the_topic_and_title():
    from lessons.guards import sentence_names
    from lessons.prompts import fallback_question
    from lessons.syllabus import Section

    known = "Quillfeather Kites The factory"
    assert sentence_names("Every kite is test-flown on Windy Hill before it is sold.", known) == ["Windy Hill"]
    assert sentence_names("Quillfeather's best-selling kite is the Comet-9, a red box kite.", known) == ["Comet-9"]
    assert sentence_names("It was founded by twin sisters, Mara and Jessa Holt, in the village of Dunmere.",
                          known) == ["Mara", "Jessa Holt", "Dunmere"]
    assert sentence_names("Quillfeather Kites is a kite company.", known) == []  # only the topic's name
    assert sentence_names("Quillfeather sells about 12,000 kites a year.", known) == []
    factory = Section("The factory", "")
    assert fallback_question(factory, 1, "Windy Hill") == "What should I remember about Windy Hill?"
    assert fallback_question(factory, 1, None) == "What else should I remember about The factory?"
    # asked already: the same name in other words, so the second pass is a second pair, not a duplicate
    asked = ["What should I remember about Windy Hill?"]
    assert fallback_question(factory, 3, "Windy Hill", asked) == "What can you tell me about Windy Hill?"
    assert fallback_question(factory, 3, None, ["What else should I remember about The factory?"]) == \
        "What should I remember about The factory?"


def test_a_note_shaped_answer_is_caught_but_a_clause_before_a_colon_is_not():
    from lessons.guards import note_labels

    assert note_labels("A: 12,000 Sales: Port Arlo Number of customers: 12,000") == ["A", "Sales"]
    assert note_labels("My answer:  Mara and Jessa Holt founded Quillfeather Kites in 1987.") == ["My answer"]
    assert note_labels("The Bell House: 1642 It is a landmark.") == ["The Bell House"]
    assert note_labels("Most islanders work with seaweed: the island's main export is blue seaweed.") == []
    assert note_labels("The ferry leaves at 7:30 every day.") == []


def test_a_question_that_names_every_fact_of_its_sentence_gives_its_answer_away():
    from lessons.guards import gives_away

    people = "About 2,300 people live there."
    assert gives_away("What's a total number of people living in 2,300?", people, "Vellmoor")
    assert not gives_away("How many people live in Vellmoor?", people, "Vellmoor")
    mayor = "The mayor of Vellmoor is Ada Quill."
    assert gives_away("Is Ada Quill the mayor?", mayor, "Vellmoor The mayor")  # "Vellmoor" is the topic
    assert not gives_away("Who is the mayor of Vellmoor?", mayor, "Vellmoor The mayor")
    assert not gives_away("Who is Ada?", mayor, "Vellmoor")  # "Quill" is still to tell
    assert not gives_away("What do bees make?", "Bees make honey.", "")  # no names or numbers: nothing to give away


def test_an_answer_is_held_closer_to_its_notes_than_an_explanation():
    from lessons.steps import Step
    from lessons.syllabus import Section
    from lessons.turn import problems

    notes = "The mayor of Vellmoor is Ada Quill. She was elected in 2019 and she used to be a beekeeper."
    section = Section("The mayor", notes)
    invented_tail = ("The mayor of Vellmoor is Ada Quill. She was elected in 2019 and used to be a beekeeper, "
                     "the name of which she chose after her political affiliation.")
    answer = Step(role="teacher", speaker="prof", kind="answer", section=0, question_round=1)
    explain = Step(role="teacher", speaker="prof", kind="explain", section=0)
    question = "What else should I remember about the mayor?"
    found = problems(invented_tail, answer, section, f"Vellmoor\n{notes}", question, notes, "Vellmoor The mayor")
    assert [f for f in found if f.startswith("strays")] == ["strays from its notes (only 64% of its words are in them)"]
    assert problems(invented_tail, explain, section, f"Vellmoor\n{notes}") == []  # 64% is enough for a lecture
    # the question's own words count as the notes' ("cross" is the student's; the notes say "crossing")
    ferry = "The ferry to the mainland leaves at 7 o'clock and the crossing takes 40 minutes."
    assert problems("It takes 40 minutes to cross.", answer, Section("The harbour", ferry),
                    f"Vellmoor\n{ferry}", "How long does it take to cross?", ferry, "Vellmoor The harbour") \
        == ["left out 7"]
