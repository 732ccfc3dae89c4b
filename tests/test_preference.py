"""Preference data: panel ballots and 👍/👎 on alternative answers become chosen/rejected pairs, and
`classroom export --format dpo` writes them in TRL's conversational preference format.

Each line is checked against the format TRL documents for preference data ("conversational"
form): {"prompt": [messages], "chosen": [one assistant message], "rejected": [one assistant
message]}, the prompt ending with the user's turn; then TRL itself (a dev dependency, as the
preference step's trainer) loads the file and renders it with a chat template.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from datasets import load_dataset
from transformers import AutoTokenizer
from trl.data_utils import is_conversational, maybe_apply_chat_template

from cli.main import main
from lessons.engine import LessonEngine, LessonRequest
from storage import AsyncStore, open_db
from storage import lessons as q
from storage import votes as v
from tests.scripted import ScriptedBackend, scripted_registry
from tests.test_panel import SOURCE, STUDENT_LINE, teacher
from tests.tiny import build_tiny_model

TEACHERS = ["ann", "bob", "cy"]


def check_trl_conversational_preference(row: dict) -> None:
    """Fail unless `row` is a valid line of TRL's conversational preference format."""
    assert set(row) == {"prompt", "chosen", "rejected"}, row.keys()
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    for messages in (prompt, chosen, rejected):
        assert isinstance(messages, list) and messages
        for m in messages:
            assert set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
            assert m["role"] in ("system", "user", "assistant")
    assert all(m["role"] != "system" for m in prompt[1:])  # a system message only opens the prompt
    assert prompt[-1]["role"] == "user"  # the completion answers the user's last turn
    assert [m["role"] for m in chosen] == [m["role"] for m in rejected] == ["assistant"]
    assert chosen != rejected


async def panel_lesson(db_path: Path) -> tuple[int, list[dict]]:
    store = AsyncStore(open_db(db_path))
    try:
        backends = {n: teacher(n) for n in TEACHERS}
        backends["kid"] = ScriptedBackend("kid", STUDENT_LINE)
        engine = LessonEngine(store, scripted_registry(backends, trainable=["kid"]))
        lid = await engine.open(LessonRequest(topic="Vellmoor", teachers=TEACHERS, students=["kid"], max_turns=20,
                                              mode="panel", source_name="v.md", source_text=SOURCE))
        assert (await engine.run(lid)).status == "finished"
        return lid, await store.call(q.turns, lid)
    finally:
        store.close()


def write_config(tmp_path: Path) -> Path:
    models = "".join(f'[models.{n}]\nbackend = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:9"\n'
                     + ("train_on_outputs = false\n" if n == "cy" else "") for n in TEACHERS)
    cfg = tmp_path / "classroom.toml"
    cfg.write_text(f'home = "{tmp_path / "home"}"\n[lessons]\ndefault_teacher = "ann"\ndefault_student = "kid"\n'
                   f'{models}'
                   '[models.kid]\nbackend = "local"\npath = "scripted"\ntrainable = true\n')
    return cfg


def test_ballots_and_votes_export_as_dpo_pairs_trl_reads(tmp_path, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "home").mkdir()
    lid, turns = asyncio.run(panel_lesson(tmp_path / "home" / "classroom.db"))
    answers = {(t["section"], t["speaker"]): t for t in turns if t["kind"] == "panel"}
    db = open_db(tmp_path / "home" / "classroom.db")
    # question 1: members prefer bob's answer by ballot
    for member, who in (("m1", "bob"), ("m2", "bob")):
        v.cast_ballot(db, answers[(0, who)]["id"], member)
    # question 2: no ballots, but 👍 on ann's answer and 👎 on bob's
    v.toggle_vote(db, "turn", answers[(1, "ann")]["id"], "m1", 1)
    v.toggle_vote(db, "turn", answers[(1, "bob")]["id"], "m2", -1)
    db.conn.close()
    # a third member's ballot, cast from the terminal
    assert main(["--config", str(cfg), "ballot", str(answers[(0, "ann")]["id"]), "--member", "m3"]) == 0
    shown = capsys.readouterr().out
    assert f"turn {answers[(0, 'bob')]['id']} by bob: 2" in shown and f"turn {answers[(0, 'ann')]['id']} by ann: 1" in shown
    assert main(["--config", str(cfg), "ballot", str(turns[0]["id"])]) == 2  # not a panel answer
    assert "is not a panel answer" in capsys.readouterr().err

    out = tmp_path / "prefs.jsonl"
    assert main(["--config", str(cfg), "export", "--format", "dpo", "--out", str(out)]) == 0
    assert "wrote 2 preference pairs from 1 lessons" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        check_trl_conversational_preference(row)
    first, second = rows
    assert first["chosen"][0]["content"] == answers[(0, "bob")]["content"]
    assert first["rejected"][0]["content"] == answers[(0, "ann")]["content"]  # cy may not be trained on: no pair
    assert second["chosen"][0]["content"] == answers[(1, "ann")]["content"]
    assert second["rejected"][0]["content"] == answers[(1, "bob")]["content"]
    # the prompt is the conversation up to the student's question: system, request, explanation, question
    assert [m["role"] for m in first["prompt"]] == ["system", "user", "assistant", "user"]
    assert first["prompt"][2]["content"].startswith("ann explains")
    assert first["prompt"][3]["content"] == STUDENT_LINE
    assert all(str(m) not in out.read_text() for m in ("m1", "m2", "m3"))  # no member ids in the export

    # TRL's own dataset handling reads the file: conversational rows, rendered with the student's template
    loaded = load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny", with_eos=True))
    assert len(loaded) == len(rows)
    for row, written in zip(loaded, rows, strict=True):
        assert is_conversational(row)
        text = maybe_apply_chat_template(row, tokenizer)
        assert text["prompt"].endswith(f"{STUDENT_LINE}<|im_end|>\n<|im_start|>assistant\n")
        assert text["chosen"] == written["chosen"][0]["content"] + "<|im_end|>\n"
        assert text["rejected"] == written["rejected"][0]["content"] + "<|im_end|>\n"
