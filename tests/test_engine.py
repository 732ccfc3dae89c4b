"""The lesson engine with deterministic scripted models: syllabus, stop rules, guards, persistence, failures."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import GenParams
from lessons import steps as lesson_steps
from lessons.engine import LessonEngine, LessonError, LessonRequest, next_step
from lessons.events import LessonFinished, LessonStarted, TokenStreamed, TurnFinished
from lessons.steps import fact_sentences, focus_sentences, lesson_turns
from lessons.syllabus import Section, sections_from_plan, sections_from_source
from lessons.turn import LESSON_SEED_STRIDE, STUDENT_FALLBACK, lesson_params
from storage import AsyncStore, open_db
from storage import lessons as q
from tests.scripted import ScriptedBackend, scripted_registry

PLAN = "1. What a share is\n2. How prices move\n3. Dividends"


def teacher_reply(messages):
    last = messages[-1]["content"]
    if "key points" in last:
        return PLAN
    if last.startswith("Teach me this point:"):
        return f"Here is the point: {last.split(':', 1)[1].splitlines()[0].strip()}. Do you follow?"
    if last.startswith("Notes on ") and "Teach me these notes" in last:  # grounded: notes in the request
        return f"Here is the point: {last.split(':', 1)[0].removeprefix('Notes on ')}. Do you follow?"
    return "Yes, that's right. The key fact stands."


def grounded_teacher(explain: str, answer: str, correct: str) -> ScriptedBackend:
    """A grounded teacher that gives the same explanation, answer to the student's question, and
    correction every time it is asked (retries included)."""
    def reply(messages):
        last = messages[-1]["content"]
        if "Teach me these notes" in last:
            return explain
        return answer if "My question:" in last else correct

    return ScriptedBackend("prof", reply)


@pytest.fixture
async def store(tmp_path):
    s = AsyncStore(open_db(tmp_path / "c.db"))
    yield s
    s.close()


@pytest.fixture
def one_pass(monkeypatch):
    """One question round per sentence instead of two, for tests about what a round does."""
    monkeypatch.setattr(lesson_steps, "ASKS_PER_SENTENCE", 1)


def make_engine(store, teacher=None, student=None, **extra):
    backends = {"prof": teacher or ScriptedBackend("prof", teacher_reply), "kid": student or ScriptedBackend("kid", lambda m: "Is it like owning a slice of pizza?")}
    backends.update(extra)
    return LessonEngine(store, scripted_registry(backends, trainable=["kid"]))


async def run_lesson(engine, turns=9, **kw):
    events = []

    async def listener(e):
        events.append(e)

    lid = await engine.open(LessonRequest(topic=kw.pop("topic", "what a stock is"), teachers=kw.pop("teachers", ["prof"]), students=kw.pop("students", ["kid"]), max_turns=turns, **kw))
    outcome = await engine.run(lid, listener)
    return lid, outcome, events


def test_next_step_cycles_explain_reply_correct_and_rotates_by_section():
    sections = [Section(f"point {i}") for i in range(3)]
    steps = [next_step(sections, i, ["a", "b"], ["x"], 100) for i in range(10)]
    assert [s.kind for s in steps[:6]] == ["explain", "reply", "correct"] * 2
    assert [s.speaker for s in steps[:6]] == ["a", "x", "a", "b", "x", "b"]
    assert steps[9] is None  # three sections of three turns: covered
    assert next_step(sections, 4, ["a"], ["x"], 4) is None  # turn limit


def test_a_grounded_section_gets_one_question_round_per_fact_sentence():
    sections = [
        Section("Harbour", "The harbour has a green lighthouse called the Tallow Lamp. The ferry leaves at 7 o'clock."),
        Section("Bell", "The Bell House was built in 1642."),
        Section("Long", " ".join(f"Fact number {i} is about thing {i}." for i in range(9))),
    ]
    steps = [next_step(sections, i, ["a"], ["x"], 100, grounded=True) for i in range(40)]
    kinds = [s.kind for s in steps if s is not None]
    qa = ["ask", "answer"]
    # each sentence twice: a pass over the section's sentences, then another
    assert kinds == ["explain", "reply", "correct", *qa * 4, "explain", "reply", "correct", *qa * 2,
                     "explain", "reply", "correct", *qa * 6]  # a long section: MAX_ASKED_SENTENCES sentences
    assert [(s.kind, s.section, s.question_round) for s in steps[3:11]] == [
        ("ask", 0, 0), ("answer", 0, 0), ("ask", 0, 1), ("answer", 0, 1),
        ("ask", 0, 2), ("answer", 0, 2), ("ask", 0, 3), ("answer", 0, 3)]
    assert lesson_steps.round_sentences(sections[0]) == [
        "The harbour has a green lighthouse called the Tallow Lamp.", "The ferry leaves at 7 o'clock."] * 2
    assert lesson_turns(sections, grounded=True) == len(kinds) and steps[len(kinds)] is None
    # each round of the long section asks about a different part of it, from its start to its end
    assert focus_sentences(sections[2]) == ["Fact number 0 is about thing 0.", "Fact number 3 is about thing 3.",
                                            "Fact number 6 is about thing 6."]
    # a sentence opening with "It" is part of the fact before it: alone it says nothing of what "it" is
    assert fact_sentences("Yes. The ferry (the Gull) leaves at 7 o'clock! It takes 40 minutes.\n\nOk. "
                          "The Bell House was built in 1642.") == [
        "The ferry (the Gull) leaves at 7 o'clock! It takes 40 minutes.", "The Bell House was built in 1642."]


def test_source_sections_follow_headings_and_cover_everything():
    doc = "# Opening hours\n" + "We open at 9 and close at 17 on weekdays. " * 5 + "\n\n# Fees\n" + "Membership costs 12 crowns a month. " * 5
    sections = sections_from_source(doc)
    assert [s.title for s in sections] == ["Opening hours", "Fees"]
    assert "12 crowns" in sections[1].text


def test_long_sections_are_split_and_nothing_is_dropped():
    doc = "\n\n".join(f"Paragraph {i} says fact number {i} is true." * 8 for i in range(30))
    sections = sections_from_source(doc, max_chars=500)
    joined = " ".join(s.text for s in sections)
    for i in range(30):
        assert f"fact number {i} is true" in joined
    assert all(len(s.text) <= 500 for s in sections)


def test_plan_titles_are_short():
    plan = "1. The Basics: stock market fundamentals and how it works can be overwhelming at first\n2. " + "word " * 40
    titles = [s.title for s in sections_from_plan(plan, "stocks")]
    assert titles[0] == "The Basics" and len(titles[1]) <= 81


def test_echo_detects_a_repeated_sentence():
    from lessons.guards import is_echo

    assert is_echo("What's your next question?", ["I'm glad to help! What's your next question?"])
    assert not is_echo("A share is part of a company.", ["What is a share? Think about ownership."])
    assert not is_echo("The gate code is 4471.", ["The gate code is 4471. What is the gate code?"])


def test_plan_parsing_pads_a_poor_plan():
    assert [s.title for s in sections_from_plan(PLAN, "stocks")] == ["What a share is", "How prices move", "Dividends"]
    assert len(sections_from_plan("I don't know", "stocks")) == 3


async def test_lesson_covers_syllabus_and_persists_every_turn(store):
    lid, outcome, events = await run_lesson(make_engine(store), turns=20)
    assert outcome.status == "finished" and outcome.reason == "syllabus covered"
    stored = await store.call(q.turns, lid)
    assert len(stored) == 9
    assert [t["role"] for t in stored[:3]] == ["teacher", "student", "teacher"]
    assert {t["section"] for t in stored} == {0, 1, 2}
    assert "What a share is" in stored[0]["content"]
    assert isinstance(events[0], LessonStarted)
    assert isinstance(events[-1], LessonFinished)
    assert sum(isinstance(e, TurnFinished) for e in events) == 9
    assert any(isinstance(e, TokenStreamed) for e in events)
    lesson = await store.call(q.get_lesson, lid)
    assert lesson["status"] == "finished" and len(lesson["syllabus"]) == 3


async def test_turn_limit_stops_the_lesson(store):
    lid, outcome, _ = await run_lesson(make_engine(store), turns=6)
    assert (outcome.status, outcome.reason, outcome.turns) == ("finished", "turn limit reached", 6)


async def test_grounded_lesson_teaches_each_source_section_with_its_notes(store):
    teacher = ScriptedBackend("prof", teacher_reply)
    doc = "# Gate\n" + "The gate code of Vellmoor is 4471. " * 5 + "\n# Mayor\n" + "The mayor of Vellmoor is Ada Quill. " * 5
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=teacher), turns=30, source_name="v.md", source_text=doc)
    assert outcome.reason == "syllabus covered"
    requests = [c[-1]["content"] for c in teacher.calls]
    assert any("4471" in r for r in requests) and any("Ada Quill" in r for r in requests)
    assert requests[0].startswith("Notes on Gate:")  # no planning call when grounded


@pytest.mark.usefixtures("one_pass")
async def test_a_grounded_teacher_inventing_facts_is_retried_and_the_grounded_reply_kept(store):
    replies = iter(["The gate code of Vellmoor is 9999, set by King Harold. What is the code?",
                    "The gate code of Vellmoor is 4471. What is the code?"])

    def teacher(messages):
        last = messages[-1]["content"]
        return next(replies) if "Teach me these notes" in last else "Yes. The gate code of Vellmoor is 4471."

    prof = ScriptedBackend("prof", teacher)
    doc = "The gate code of Vellmoor is 4471, and it opens the north gate of the town wall for visitors."
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=prof), turns=5, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    assert turns[0]["content"] == "The gate code of Vellmoor is 4471. What is the code?"
    correction_request = next(c[-1]["content"] for c in prof.calls if "You asked me" in c[-1]["content"])
    assert "You asked me: What is the code?" in correction_request and "4471" in correction_request


async def test_a_grounded_explanation_leaving_out_the_notes_facts_is_retried(store):
    replies = iter(["Vellmoor has a gate. What does it open?", "The gate code of Vellmoor is 4471. What is it?"])

    def teacher(messages):
        return next(replies) if "Teach me these notes" in messages[-1]["content"] else "Yes: the code is 4471."

    doc = "The gate code of Vellmoor is 4471, and it opens the north gate of the town wall for visitors."
    lid, _, _ = await run_lesson(make_engine(store, teacher=ScriptedBackend("prof", teacher)), turns=3,
                                 source_name="v.md", source_text=doc)
    assert (await store.call(q.turns, lid))[0]["content"] == "The gate code of Vellmoor is 4471. What is it?"


async def test_a_correction_restating_the_students_right_answer_is_kept_not_failed(store):
    fact = "The gate code of Vellmoor is 4471."

    def teacher(messages):
        return f"{fact} What is the code?" if "Teach me these notes" in messages[-1]["content"] else fact

    doc = f"{fact} It opens the north gate of the town wall for visitors."
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=ScriptedBackend("prof", teacher),
                                                   student=ScriptedBackend("kid", fact)),
                                       turns=3, source_name="v.md", source_text=doc)
    assert outcome.status == "finished", outcome.reason
    assert (await store.call(q.turns, lid))[2]["content"] == fact


async def test_student_speaking_as_teacher_is_cut(store):
    student = ScriptedBackend("kid", "I think it is a share.\nTeacher: Correct, well done!")
    lid, _, _ = await run_lesson(make_engine(store, student=student), turns=3)
    reply = (await store.call(q.turns, lid))[1]
    assert reply["content"] == "I think it is a share."


async def test_student_echoing_teacher_is_retried_then_falls_back(store):
    student = ScriptedBackend("kid", lambda m: m[-1]["content"])  # parrots the teacher every time
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=3)
    reply = (await store.call(q.turns, lid))[1]
    assert (reply["content"], reply["kind"]) == (STUDENT_FALLBACK, "fallback")
    assert len(student.calls) == 3  # first try plus two retries
    assert outcome.status == "finished"


async def test_empty_teacher_replies_fail_the_lesson_with_a_reason(store):
    teacher = ScriptedBackend("prof", [PLAN, "", "", ""])
    _, outcome, _ = await run_lesson(make_engine(store, teacher=teacher), turns=6)
    assert outcome.status == "failed" and "no usable reply" in outcome.reason


async def test_model_failure_mid_lesson_keeps_earlier_turns(store):
    teacher = ScriptedBackend("prof", teacher_reply, fail_on_call=4)  # plan, explain, correct, then fails
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=teacher), turns=9)
    assert outcome.status == "failed" and "scripted failure" in outcome.reason and "prof" in outcome.reason
    assert len(await store.call(q.turns, lid)) == 3
    assert (await store.call(q.get_lesson, lid))["reason"] == outcome.reason


async def test_stop_request_ends_lesson_as_stopped(store):
    engine = make_engine(store)
    stop = asyncio.Event()
    lid = await engine.open(LessonRequest(topic="stocks", teachers=["prof"], students=["kid"], max_turns=9))

    async def listener(e):
        if isinstance(e, TurnFinished) and e.turn["seq"] == 2:
            stop.set()

    outcome = await engine.run(lid, listener, stop)
    assert outcome.status == "stopped" and outcome.turns == 2


async def test_interrupted_lesson_resumes_where_it_stopped(store):
    engine = make_engine(store)
    lid = await engine.open(LessonRequest(topic="stocks", teachers=["prof"], students=["kid"], max_turns=6))
    stop = asyncio.Event()

    async def listener(e):
        if isinstance(e, TurnFinished) and e.turn["seq"] == 4:
            stop.set()

    await engine.run(lid, listener, stop)
    await store.call(q.resume_lesson, lid)
    outcome = await engine.run(lid)
    stored = await store.call(q.turns, lid)
    assert outcome.status == "finished" and [t["seq"] for t in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[4]["role"] == "student" and stored[4]["section"] == 1


async def test_two_students_take_turns(store):
    engine = make_engine(store, kid2=ScriptedBackend("kid2", "What about bonds?"))
    lid, _, _ = await run_lesson(engine, turns=6, students=["kid", "kid2"])
    speakers = [t["speaker"] for t in await store.call(q.turns, lid) if t["role"] == "student"]
    assert speakers == ["kid", "kid2"]


@pytest.mark.parametrize(
    ("topic", "teachers", "message"),
    [("", ["prof"], "empty"), ("x" * 201, ["prof"], "under 200"), ("ok", ["nobody"], "unknown model 'nobody'")],
)
async def test_bad_requests_are_refused_before_anything_is_stored(store, topic, teachers, message):
    engine = make_engine(store)
    with pytest.raises(LessonError, match=message):
        await engine.open(LessonRequest(topic=topic, teachers=teachers, students=["kid"], max_turns=4))
    assert await store.call(q.list_lessons) == []


@pytest.mark.usefixtures("one_pass")
async def test_a_grounded_section_ends_with_the_students_own_question_answered_from_the_notes(store):
    def teacher(messages):
        last = messages[-1]["content"]
        if "Teach me these notes" in last:  # answering its own check question is cut off
            return "The mayor of Vellmoor is Ada Quill. Who is the mayor? Answer: Ada Quill."
        if "My question: Who runs the ferry?" in last:  # first attempt invents a name: tried again
            answers.append(last)
            return "Captain Bob runs the ferry." if len(answers) == 1 else "Ada Quill runs the ferry."
        return "Not quite. The mayor of Vellmoor is Ada Quill."

    answers: list[str] = []
    student = ScriptedBackend("kid", ["Maybe a fisherman.", "Interesting! Who runs the ferry?"])
    prof = ScriptedBackend("prof", teacher)
    doc = "The mayor of Vellmoor is Ada Quill, who also runs the ferry to the mainland every morning."
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=prof, student=student), turns=20,
                                       source_name="v.md", source_text=doc)
    assert outcome.reason == "syllabus covered"
    turns = await store.call(q.turns, lid)
    assert [(t["kind"], t["content"]) for t in turns] == [
        ("explain", "The mayor of Vellmoor is Ada Quill. Who is the mayor?"),
        ("reply", "Maybe a fisherman."),
        ("correct", "Not quite. The mayor of Vellmoor is Ada Quill."),
        ("ask", "Who runs the ferry?"),  # only the question, without the student's preamble
        ("answer", "Ada Quill runs the ferry."),
    ]
    assert len(answers) == 2 and answers[0].startswith("Notes on ") and "runs the ferry to the mainland" in answers[0]


@pytest.mark.usefixtures("one_pass")
async def test_each_question_round_asks_about_the_next_sentence_of_the_notes(store):
    doc = ("# The mayor\nThe mayor of Vellmoor is Ada Quill. She was elected in 2019 and used to be a beekeeper. "
           "The town hall opens at 9 o'clock.")
    student = ScriptedBackend("kid", ["Maybe a fisherman.", "When was the mayor elected?", "When does the town hall open?"])
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=20, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    assert [t["kind"] for t in turns] == ["explain", "reply", "correct", "ask", "answer", "ask", "answer"]
    asked = [c[-1]["content"] for c in student.calls[1:]]
    # the round's sentence, with the one after it that opens with "She" (one fact, lessons/steps.py)
    assert asked[0].endswith(": The mayor of Vellmoor is Ada Quill. She was elected in 2019 and used to be a beekeeper.")
    assert asked[1].endswith(": The town hall opens at 9 o'clock.")
    assert [t["content"] for t in turns if t["kind"] == "ask"] == ["When was the mayor elected?", "When does the town hall open?"]


@pytest.mark.usefixtures("one_pass")
async def test_a_teacher_whose_every_answer_misses_the_answer_quotes_its_notes_instead(store):
    """Answers to the student's question and corrections after the check question alike."""
    doc = "Vellmoor has one school, the Driftwood School, with 140 pupils, and a harbour."
    prof = grounded_teacher("Vellmoor has one school, the Driftwood School, with 140 pupils. How many pupils?",
                            "The school is called Vellmoor.",  # every attempt: true words, wrong answer
                            "Right, well done!")  # a correction that restates nothing
    student = ScriptedBackend("kid", ["140.", "What is the name of the school?"])
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=prof, student=student), turns=20,
                                       source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert sum("My question:" in c[-1]["content"] for c in prof.calls) == 3  # tried, then retried twice
    assert (turns[-1]["kind"], turns[-1]["content"]) == ("answer", doc)
    assert (turns[2]["kind"], turns[2]["content"]) == ("correct", doc)  # after "How many pupils?"


@pytest.mark.usefixtures("one_pass")
async def test_a_question_naming_only_the_title_is_replaced_and_its_answer_checked_against_its_sentence(store):
    unit = ("Quillfeather Kites is a kite company. It was founded in 1987 by twin sisters, Mara and Jessa Holt, "
            "in the village of Dunmere.")
    doc = f"# Quillfeather Kites\n{unit} The factory stands beside Lake Oona."
    generic = "What's a good question to ask someone who knows Quillfeather Kites?"  # names nothing of its sentence

    def teacher(messages):
        last = messages[-1]["content"]
        if "Teach me these notes" in last:
            return "Quillfeather Kites is a kite company founded in 1987 by Mara and Jessa Holt. Who founded it?"
        if "My question: What should I remember about Mara?" in last:
            return "Quillfeather Kites is a kite company."  # true, but not what its fact says
        if "My question:" in last:
            return "The factory stands beside Lake Oona."
        return "Quillfeather Kites is a kite company founded by Mara and Jessa Holt."

    student = ScriptedBackend("kid", ["The Holts.", generic, generic, generic, "Where is the factory?"])
    lid, outcome, _ = await run_lesson(make_engine(store, teacher=ScriptedBackend("prof", teacher), student=student),
                                       turns=20, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert [(t["kind"], t["content"]) for t in turns[3:]] == [
        # the canned question names the first name of the round's fact, so two rounds don't ask alike
        ("ask", "What should I remember about Mara?"),
        # its answer must tell the round's fact (the company, with the "It was founded…" after it):
        # the teacher's didn't, so it is quoted
        ("answer", unit),
        ("ask", "Where is the factory?"),
        ("answer", "The factory stands beside Lake Oona.")]


@pytest.mark.usefixtures("one_pass")
async def test_a_student_with_no_usable_question_asks_the_fallback_one(store):
    doc = "The gate code of Vellmoor is 4471, and it opens the north gate of the town wall for visitors."
    student = ScriptedBackend("kid", ["Maybe 12?", "I like gates."])  # its "question" has no question in it
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=5, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    assert turns[3]["kind"] == "ask" and turns[3]["content"].startswith("What should I remember about")


@pytest.mark.usefixtures("one_pass")
async def test_a_student_question_about_nothing_in_the_section_is_replaced_by_one_about_it(store):
    doc = "The gate code of Vellmoor is 4471, and it opens the north gate of the town wall for visitors."
    student = ScriptedBackend("kid", ["Maybe 12?", "What is the answer to this question?"])
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=5, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    assert turns[3]["kind"] == "ask" and turns[3]["content"].startswith("What should I remember about")
    # a question that names something from the notes is kept as the student asked it
    student = ScriptedBackend("kid", ["Maybe 12?", "Which gate does the code open?"])
    lid, _, _ = await run_lesson(make_engine(store, student=student), turns=5, source_name="v.md", source_text=doc)
    assert (await store.call(q.turns, lid))[3]["content"] == "Which gate does the code open?"


async def test_a_correction_is_held_to_the_sentence_the_exchange_was_about_even_without_a_check_question(store):
    doc = "# The kites\nThe best-selling kite is the Comet-9, a crimson stunt kite. The company also makes the Moth, a tiny kite."
    moth = "The company also makes the Moth, a tiny kite."
    corrections: list[str] = []

    def teacher(messages):
        last = messages[-1]["content"]
        if "Teach me these notes" in last:
            return "The Comet-9 is a crimson stunt kite. The Moth is a tiny kite."  # no check question
        if "Check my answer" in last:
            corrections.append(last)
            return "Right! The Moth is a crimson stunt kite."  # the Comet-9's facts, pinned on the Moth
        return "The Comet-9 is a crimson stunt kite."

    student = ScriptedBackend("kid", ["The Moth, a tiny kite.", "What is the best-selling kite?", "What is the Moth?"])
    lid, _, _ = await run_lesson(make_engine(store, teacher=ScriptedBackend("prof", teacher), student=student),
                                 turns=3, source_name="k.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert len(corrections) == 3  # tried, then retried twice: "crimson" and "stunt" belong to the other sentence
    assert (turns[2]["kind"], turns[2]["content"]) == ("correct", moth)  # the Moth's sentence, quoted


async def test_each_sentence_is_asked_about_twice_and_the_second_time_in_other_words(store):
    doc = "# The mayor\nThe mayor of Vellmoor is Ada Quill, a former beekeeper."
    student = ScriptedBackend("kid", ["Maybe a fisherman.", "Who is the mayor of Vellmoor?",
                                      "Who is the mayor of Vellmoor?",  # its first question again: tried again
                                      "Who runs Vellmoor?"])
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=20, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    assert [t["kind"] for t in turns] == ["explain", "reply", "correct", "ask", "answer", "ask", "answer"]
    assert [t["content"] for t in turns if t["kind"] == "ask"] == ["Who is the mayor of Vellmoor?", "Who runs Vellmoor?"]
    assert len(student.calls) == 4  # the reply, the first question, the repeat and the new one


@pytest.mark.usefixtures("one_pass")
async def test_a_student_question_holding_its_own_answer_is_asked_again(store):
    doc = "# People\nAbout 2,300 people live in Vellmoor."
    student = ScriptedBackend("kid", ["Maybe 10.", "How many people live in Vellmoor, 2,300?",
                                      "How many people live in Vellmoor?"])
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=20, source_name="v.md", source_text=doc)
    turns = await store.call(q.turns, lid)
    assert [t["content"] for t in turns if t["kind"] == "ask"] == ["How many people live in Vellmoor?"]


async def test_a_second_canned_question_asks_from_another_name_or_in_other_words(store):
    doc = ("# History\nQuillfeather Kites is a kite company. It was founded by Mara and Jessa Holt in Dunmere. "
           "The factory stands beside Lake Oona.")
    student = ScriptedBackend("kid", lambda messages: "I like kites.")  # never a usable question
    lid, outcome, _ = await run_lesson(make_engine(store, student=student), turns=40, source_name="q.md",
                                       source_text=doc, topic="Quillfeather Kites")
    turns = await store.call(q.turns, lid)
    assert outcome.reason == "syllabus covered"
    # the first pass over the two facts (the company with its "It was founded…", the factory), then
    # the second: no question twice, so no pair twice
    assert [t["content"] for t in turns if t["kind"] == "ask"] == [
        "What should I remember about Mara?",
        "What should I remember about Lake Oona?",
        "What should I remember about Jessa Holt?",  # its fact's next name: the fact from another side
        "What can you tell me about Lake Oona?",  # its only name, in other words
    ]


@pytest.mark.usefixtures("one_pass")
async def test_an_answer_written_as_labelled_notes_is_tried_again_then_quoted(store):
    doc = "# Sales\nQuillfeather sells about 12,000 kites a year to a toy shop in Port Arlo."
    prof = grounded_teacher("Quillfeather sells about 12,000 kites a year to a toy shop in Port Arlo. Who buys them?",
                            "Sales: 12,000 kites. Customer: a toy shop in Port Arlo.",  # every fact, as a form
                            "Right. Quillfeather sells about 12,000 kites a year to a toy shop in Port Arlo.")
    student = ScriptedBackend("kid", ["A toy shop.", "Who buys the kites of Quillfeather?"])
    lid, _, _ = await run_lesson(make_engine(store, teacher=prof, student=student), turns=20, source_name="s.md",
                                 source_text=doc, topic="Quillfeather")
    turns = await store.call(q.turns, lid)
    assert sum("My question:" in c[-1]["content"] for c in prof.calls) == 3
    assert (turns[-1]["kind"], turns[-1]["content"]) == ("answer", doc.split("\n", 1)[1])


async def test_a_canned_question_about_a_fact_with_she_in_it_is_answered_with_all_of_it(store):
    doc = "# The mayor\nThe mayor of Vellmoor is Ada Quill. She was elected in 2019 and used to be a beekeeper."
    student = ScriptedBackend("kid", lambda messages: "I like bees.")  # never a usable question
    prof = ScriptedBackend("prof", lambda messages: "The mayor of Vellmoor is Ada Quill.")  # true, half the fact
    lid, _, _ = await run_lesson(make_engine(store, teacher=prof, student=student), turns=40, source_name="v.md",
                                 source_text=doc, topic="Vellmoor")
    turns = await store.call(q.turns, lid)
    rounds = [(t["content"], n["content"]) for t, n in zip(turns, turns[1:], strict=False) if t["kind"] == "ask"]
    assert rounds == [  # one fact, asked twice; the half answer is quoted whole, so the election is taught
        ("What should I remember about Ada Quill?", doc.split("\n", 1)[1]),
        ("What can you tell me about Ada Quill?", doc.split("\n", 1)[1]),
    ]


class SeedRecorder(ScriptedBackend):
    """A scripted model that notes the sampling seed of every request."""

    def __init__(self, name, replies):
        super().__init__(name, replies)
        self.seeds = []

    async def chat(self, messages, params=None, usage=None):
        self.seeds.append(params.seed if params is not None else None)
        return await super().chat(messages, params, usage)


async def test_each_lesson_samples_with_its_own_seed_so_a_second_lesson_is_not_a_copy(store):
    student = SeedRecorder("kid", "Is it like owning a slice of pizza?")
    engine = make_engine(store, student=student)
    await run_lesson(engine, turns=3)
    await run_lesson(engine, turns=3)
    assert student.seeds == [0, LESSON_SEED_STRIDE]  # one reply per lesson, each lesson its own seed


def test_lesson_params_keep_a_random_seed_random_and_offset_a_fixed_one():
    assert lesson_params(GenParams(seed=None), 7).seed is None
    assert lesson_params(GenParams(seed=5), 1).seed == 5  # lesson 1 samples as the model's own settings say
    assert lesson_params(GenParams(seed=5), 3).seed == 5 + 2 * LESSON_SEED_STRIDE
