"""Anchors: general questions the student answers itself and trains on beside new lessons."""

from __future__ import annotations

import json
from importlib import resources

from trainer import anchors


def test_anchor_questions_are_kept_apart_from_the_gates_control_set():
    control = resources.files("quiz").joinpath("control.jsonl").read_text(encoding="utf-8")
    control_questions = {json.loads(x)["question"].lower() for x in control.splitlines() if x.strip()}
    questions = anchors.questions()
    assert len(questions) >= 30 and len(set(questions)) == len(questions)
    assert not {q.lower() for q in questions} & control_questions


def test_a_run_gets_a_share_of_its_examples_as_anchors_at_most_every_question():
    assert anchors.how_many(10, 1.0) == 10
    assert anchors.how_many(3, 0.5) == 2
    assert anchors.how_many(10, 0.0) == 0
    assert anchors.how_many(1000, 1.0) == len(anchors.questions())
