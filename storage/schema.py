"""The one schema, as an ordered list of migrations. `PRAGMA user_version` records how far a file got."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: everything a lesson, its votes, its quizzes and the training runs need.
    """
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE lessons (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        source_id INTEGER REFERENCES sources(id),
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running','finished','stopped','interrupted','failed')),
        reason TEXT,
        mode TEXT NOT NULL DEFAULT 'single' CHECK (mode IN ('single','rotate','panel')),
        max_turns INTEGER NOT NULL,
        syllabus TEXT,
        started_by TEXT,
        guild_id INTEGER,
        channel_id INTEGER,
        thread_id INTEGER,
        summary_message_id INTEGER,
        approved INTEGER NOT NULL DEFAULT 0,
        approved_at TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX lessons_status ON lessons(status);
    CREATE INDEX lessons_guild ON lessons(guild_id, status);
    CREATE TABLE lesson_participants (
        lesson_id INTEGER NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('teacher','student')),
        position INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (lesson_id, model, role)
    );
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        lesson_id INTEGER NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        speaker TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('teacher','student')),
        kind TEXT NOT NULL DEFAULT 'explain',
        section INTEGER,
        content TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms INTEGER,
        message_id INTEGER,
        created_at TEXT NOT NULL,
        UNIQUE (lesson_id, seq)
    );
    CREATE INDEX turns_message ON turns(message_id);
    CREATE TABLE votes (
        target_type TEXT NOT NULL CHECK (target_type IN ('turn','lesson','answer')),
        target_id INTEGER NOT NULL,
        member_id TEXT NOT NULL,
        value INTEGER NOT NULL CHECK (value IN (-1, 1)),
        via TEXT NOT NULL DEFAULT 'button',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (target_type, target_id, member_id)
    );
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        lesson_id INTEGER NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
        curator TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('approve','reject')),
        reason TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX approvals_lesson ON approvals(lesson_id);
    CREATE TABLE quiz_items (
        id INTEGER PRIMARY KEY,
        lesson_id INTEGER REFERENCES lessons(id) ON DELETE CASCADE,
        topic TEXT NOT NULL,
        question TEXT NOT NULL,
        answer TEXT,
        keywords TEXT,
        split TEXT NOT NULL DEFAULT 'heldout' CHECK (split IN ('heldout','control','game')),
        created_at TEXT NOT NULL
    );
    CREATE INDEX quiz_items_lesson ON quiz_items(lesson_id);
    CREATE TABLE quiz_answers (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES quiz_items(id) ON DELETE CASCADE,
        answerer TEXT NOT NULL,
        answerer_kind TEXT NOT NULL CHECK (answerer_kind IN ('model','member')),
        adapter_id INTEGER,
        run_id INTEGER,
        answer TEXT NOT NULL,
        correct INTEGER,
        grader TEXT,
        message_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX quiz_answers_item ON quiz_answers(item_id);
    CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY,
        student TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running','promoted','rejected','skipped','failed','interrupted')),
        trigger TEXT,
        adapter_id INTEGER,
        examples INTEGER,
        tokens INTEGER,
        seconds REAL,
        before TEXT,
        after TEXT,
        reason TEXT,
        data_hash TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX training_runs_student ON training_runs(student, id);
    CREATE TABLE adapters (
        id INTEGER PRIMARY KEY,
        student TEXT NOT NULL,
        version INTEGER NOT NULL,
        parent_id INTEGER REFERENCES adapters(id),
        run_id INTEGER,
        path TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('candidate','active','retired','rejected','deleted')),
        metrics TEXT,
        data_hash TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (student, version)
    );
    CREATE UNIQUE INDEX adapters_one_active ON adapters(student) WHERE status = 'active';
    """,
    # 2: which lessons a run used (so "nothing new" can be told) and whose turns trained it.
    """
    ALTER TABLE training_runs ADD COLUMN lesson_ids TEXT;
    ALTER TABLE training_runs ADD COLUMN sources TEXT;
    """,
    # 3: Discord bookkeeping. Which messages show a turn or a lesson (so a reaction on any part of a
    # split turn counts, and its vote buttons can be refreshed), and notices told to a server once.
    """
    CREATE TABLE discord_messages (
        message_id INTEGER PRIMARY KEY,
        target_type TEXT NOT NULL CHECK (target_type IN ('turn','lesson','answer')),
        target_id INTEGER NOT NULL,
        channel_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX discord_messages_target ON discord_messages(target_type, target_id);
    CREATE TABLE guild_notices (
        guild_id INTEGER NOT NULL,
        notice TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, notice)
    );
    """,
    # 4: quiz games in Discord. A game asks questions in rounds; members' and the student's answers
    # belong to a round; a student answer members voted down, with the teacher's correction, becomes a
    # candidate training example that a curator approves or rejects.
    """
    CREATE TABLE quiz_games (
        id INTEGER PRIMARY KEY,
        student TEXT NOT NULL,
        teacher TEXT NOT NULL,
        lesson_id INTEGER REFERENCES lessons(id) ON DELETE SET NULL,
        topic TEXT,
        questions INTEGER NOT NULL,
        seconds INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running','finished','interrupted','failed')),
        started_by TEXT,
        guild_id INTEGER,
        channel_id INTEGER,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX quiz_games_channel ON quiz_games(channel_id, status);
    CREATE TABLE quiz_rounds (
        id INTEGER PRIMARY KEY,
        game_id INTEGER NOT NULL REFERENCES quiz_games(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES quiz_items(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open','closed')),
        message_id INTEGER,
        explanation TEXT,
        created_at TEXT NOT NULL,
        closed_at TEXT,
        UNIQUE (game_id, seq)
    );
    ALTER TABLE quiz_answers ADD COLUMN round_id INTEGER REFERENCES quiz_rounds(id) ON DELETE CASCADE;
    CREATE UNIQUE INDEX quiz_answers_round_answerer ON quiz_answers(round_id, answerer) WHERE round_id IS NOT NULL;
    CREATE TABLE quiz_corrections (
        id INTEGER PRIMARY KEY,
        answer_id INTEGER NOT NULL UNIQUE REFERENCES quiz_answers(id) ON DELETE CASCADE,
        student TEXT NOT NULL,
        teacher TEXT NOT NULL,
        system TEXT NOT NULL,
        question TEXT NOT NULL,
        correction TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','approved','rejected')),
        curator TEXT,
        decided_at TEXT,
        message_id INTEGER,
        channel_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX quiz_corrections_student ON quiz_corrections(student, status);
    """,
    # 5: which approved quiz corrections a training run used, like lesson_ids for lessons.
    """
    ALTER TABLE training_runs ADD COLUMN correction_ids TEXT;
    """,
    # tokens each server spent on paid (openai-backend) models per UTC day, for daily token budgets.
    """
    CREATE TABLE token_usage (
        guild_id INTEGER NOT NULL,
        day TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (guild_id, day, model)
    );
    """,
    # panel lessons: each member's ballot for the best of the teachers' answers to one student question
    # (one per member per lesson section); the winner is the only answer that trains the student.
    """
    CREATE TABLE panel_ballots (
        lesson_id INTEGER NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
        section INTEGER NOT NULL,
        member_id TEXT NOT NULL,
        turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        PRIMARY KEY (lesson_id, section, member_id)
    );
    CREATE INDEX panel_ballots_turn ON panel_ballots(turn_id);
    """,
    # which process runs a training run (host:pid:start time), so a run whose process died (a killed
    # `classroom train`) is recognised as interrupted instead of blocking every later run.
    """
    ALTER TABLE training_runs ADD COLUMN owner TEXT;
    """,
]
