"""Cleaning model output before it becomes a turn: role swaps, echo loops, empty replies."""

from __future__ import annotations

import difflib
import re

from lessons.steps import fact_sentences

_LABEL = re.compile(r"^\s*[*_]*\s*([^\n:*_]{1,40}?)\s*[*_]*\s*:\s*")
_ROLE_TAGS = re.compile(r"<\|im_(?:start|end)\|>(?:assistant|user|system)?|<\|(?:assistant|user|system|eot_id|end)\|>")


def clean_reply(text: str, *, own_labels: list[str], other_labels: list[str]) -> str:
    """Drop a leading label naming the speaker itself, and cut the reply where another participant starts.

    Small models often go on to write the whole dialogue ("Student: ... Teacher: ..."). What
    follows another participant's label is not this turn, so it is dropped; a reply that
    *starts* with another participant's label is a role swap and comes back empty.
    """
    own = {label.strip().lower() for label in own_labels if label.strip()}
    other = {label.strip().lower() for label in other_labels if label.strip()}
    text = _ROLE_TAGS.sub("", text).strip()
    m = _LABEL.match(text)
    if m and m.group(1).strip().lower() in own:
        text = text[m.end() :]
    kept: list[str] = []
    for line in text.split("\n"):
        m = _LABEL.match(line)
        if m and m.group(1).strip().lower() in other:
            break
        kept.append(line)
    return "\n".join(kept).strip()


def names_other_speaker(text: str, other_labels: list[str]) -> bool:
    """True once a line after the first starts with another participant's label: the turn is over."""
    other = {label.strip().lower() for label in other_labels if label.strip()}
    for line in text.split("\n")[1:]:
        m = _LABEL.match(line)
        if m and m.group(1).strip().lower() in other:
            return True
    return False


def is_echo(reply: str, previous: list[str], threshold: float = 0.9) -> bool:
    """True when the reply repeats a recent turn almost word for word (an echo loop)."""
    norm = _normalise(reply)
    if not norm:
        return False
    for prev in previous:
        p = _normalise(prev)
        if p and (norm == p or difflib.SequenceMatcher(None, norm, p).ratio() >= threshold):
            return True
        # parroting the teacher's own question back is an echo; repeating a fact it taught is an answer
        if reply.rstrip().endswith("?") and len(norm) >= 12 and norm in p:
            return True
    return False


def _normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-zA-Z'-]*[a-zA-Z]")  # a capitalised word inside a sentence ("Comet" of "Comet-9")


def ungrounded_terms(reply: str, notes: str) -> list[str]:
    """Numbers and names in a grounded teacher's reply that its notes never mention: likely made up.

    A 135M teacher with notes in front of it still invents ("the ferry takes 5 hours", "the
    Pacific Ocean"); such a turn would teach the student something false. Names are capitalised
    words inside a sentence, so "The" or "She" opening a sentence don't count.
    """
    have_numbers = {n.replace(",", "") for n in _NUMBER.findall(notes)}
    have_words = set(re.findall(r"[a-z0-9']+", notes.lower()))
    missing = [n for n in _NUMBER.findall(reply) if n.replace(",", "") not in have_numbers]
    missing += [w for w in _NAME.findall(reply) if w.lower().strip("'") not in have_words and w != "I"]
    return list(dict.fromkeys(missing))


def missing_key_terms(reply: str, notes: str) -> list[str]:
    """The notes' numbers and names that a reply leaves out (an explanation that skips the facts)."""
    said_numbers = {n.replace(",", "") for n in _NUMBER.findall(reply)}
    said_words = set(re.findall(r"[a-z0-9']+", reply.lower()))
    keys = [n for n in _NUMBER.findall(notes) if n.replace(",", "") not in said_numbers]
    keys += [w for w in _NAME.findall(notes) if w.lower().strip("'") not in said_words]
    return list(dict.fromkeys(keys))


def answering_sentence(question: str, notes: str, known: str = "", prefer: str | None = None) -> str | None:
    """The fact of the notes (a sentence, with those after it that open with "She" or "It":
    `steps.fact_sentences`) that shares the most content words with a question, leaving out the
    words of `known` (the topic and title, which most sentences share): where its answer most
    likely is. On a tie, or when no sentence shares a word, `prefer` (the sentence the
    question was asked about), if given; else the first of the tied, or None."""
    facts = fact_sentences(notes)
    named = _words(known)
    asked = {w for w in _content_words(question) if not _found(w, named)}

    def shared(fact: str) -> int:
        have = _words(fact)
        return sum(_found(w, have) for w in asked)

    best = max(((shared(fact), fact == prefer, -i) for i, fact in enumerate(facts)), default=None)
    if best is None or (best[0] == 0 and prefer not in facts):
        return None
    return facts[-best[2]]


def unanswered_terms(answer: str, question: str, source: str) -> list[str]:
    """The numbers and names of `source` (the sentence holding the answer) that the question does not
    already name and the answer leaves out: "What is the name of the school?" answered "The school
    is called Vellmoor." when the notes say "the Driftwood School, with 140 pupils"."""
    asked = _words(question)
    return [t for t in missing_key_terms(answer, source) if _as_word(t) not in asked]


def other_facts(answer: str, asked: str, source: str, notes: str) -> list[str]:
    """Content words of an answer that its notes have, but only outside `source` (the sentence that
    answers the question) and not in `asked` (the question, topic and title): facts of other
    sentences mixed into the answer.

    A 135M teacher answering "What's the Driftwood School?" from its notes wrote "Vellmoor is a
    school of 140 students that specializes in the cultivation and use of seaweed": every word is
    in the notes, but "seaweed" belongs to the sentence about the island's export, and the pair
    would teach that the school grows seaweed. Lexical checks can't tell a wrong relation from a
    right one; an answer that keeps to the one sentence that answers the question can't build one.
    """
    have, own = _words(notes), _words(source) | _words(asked)
    return list(dict.fromkeys(w for w in _content_words(answer) if _found(w, have) and not _found(w, own)))


_NAMED = re.compile(r"(?<=[a-z,;] )[A-Z][A-Za-z0-9'-]*[A-Za-z0-9](?: [A-Z][A-Za-z0-9'-]*[A-Za-z0-9])*")


def sentence_names(sentence: str, known: str = "") -> list[str]:
    """The names a sentence gives ("Windy Hill", "Port Arlo"), in order, leaving out those `known`
    (the topic and the section's title) already has: what a question about that sentence alone
    can ask about."""
    named = _words(known)
    return list(dict.fromkeys(n for n in _NAMED.findall(sentence) if not all(_found(w, named) for w in _words(n))))


def names_all(text: str, name: str) -> bool:
    """Whether `text` has every word of `name` ("What should I remember about Port Arlo?" names
    "Port Arlo"; "Pip" counts though it is short)."""
    have = _words(text)
    return all(_found(w, have) for w in _words(name))


_NOTE_LABEL = re.compile(r"(?:^|(?<=[.!?])\s+|(?<=\d)\s+)([A-Z][A-Za-z]*(?: [A-Za-z]+){0,3}):(?=\s)")


def note_labels(text: str) -> list[str]:
    """The "Label:" heads of a reply written as notes instead of sentences: "A: 12,000 Sales: Port
    Arlo Number of customers: 12,000", "My answer: Mara and Jessa Holt…", "The Bell House: 1642".

    A 135M teacher asked a question sometimes answers in the shape of a form; every name and
    number may be right, but a student trained on it answers in fragments, and the relation
    between them ("Port Arlo" is the biggest customer) is not in the pair at all. A colon after a
    clause ("Most islanders work with seaweed: the main export…") is longer than a label and
    doesn't count."""
    return [m.group(1) for m in _NOTE_LABEL.finditer(text)]


def gives_away(question: str, sentence: str, known: str = "") -> bool:
    """Whether a question about `sentence` already names every name and number it gives, besides
    those of `known` (topic and title): "What's a total number of people living in 2,300?" asks
    nothing its answer could tell."""
    named, asked = _words(known), _words(question)
    keys = [w for w in map(_as_word, key_terms(sentence)) if not _found(w, named)]
    return bool(keys) and all(_found(w, asked) for w in keys)


def _as_word(term: str) -> str:
    """A name or number as `_words` spells it ("2,300" is "2300", "'Pip'" is "pip")."""
    return term.lower().replace(",", "").strip("'")


def key_terms(notes: str) -> list[str]:
    """The numbers and names of a section's notes: what an explanation of it has to mention."""
    return list(dict.fromkeys(_NUMBER.findall(notes) + _NAME.findall(notes)))


def copied_phrases(reply: str, phrases: tuple[str, ...]) -> list[str]:
    """Which of a prompt's fixed phrases a reply copied (a small model echoing its instructions)."""
    low = reply.lower()
    return [p.strip() for p in phrases if p in low]


_QUESTION_END = re.compile(r"\?(?=[\s\"'*_)]|$)")
_SENTENCE_END = re.compile(r"[.!](?:\s|$)")


def end_at_question(text: str) -> str:
    """An explanation cut after its check question: the first question that follows a statement.

    Small teachers go on to answer their own question ("Question: …? Answer: …"), or to invent
    more question-and-answer pairs; that would leave the student nothing to answer, and teach
    invented facts.
    """
    for m in _QUESTION_END.finditer(text):
        if _SENTENCE_END.search(text, 0, m.start()):
            return text[: m.end()].rstrip()
    return text


MIN_SUPPORT = 0.6
"""A grounded teacher's turn with fewer of its content words in its notes is tried again, and not trained on."""
MIN_ANSWER_SUPPORT = 0.8
"""An answer to a question (or a correction) is one fact, said in its notes' words: one with fewer of
its content words in the notes or the question is tried again, then the notes' sentence quoted.
"The mayor is Ada Quill. She was elected in 2019 and used to be a beekeeper, the name of which
she chose after her political affiliation" has two thirds of its words in the notes, and a tail
that teaches an invention."""

_STOPWORDS = frozenset("""
about above after again also always among another because been before being below between both cannot could
does doing down during each every from further have having here into itself just like made make many more most
much must only other over same should some such than that their them then there these they this those through
under until very well were what when where which while will with would your yours it's that's there's they're
""".split())


def notes_support(reply: str, notes: str) -> float:
    """The share of a reply's content words (numbers, and words of four or more letters that are not
    function words) that its notes contain: how closely a grounded teacher kept to them.

    A 135M teacher "correcting" from its notes often restates the student's invention instead
    ("Vellmoor ... has been around for centuries and is known for its unique blend of traditional
    and modern elements": a third of its words are in the notes); a faithful turn is mostly the
    notes' own words. A reply with no content words counts as fully supported.
    """
    have = _words(notes)
    words = _content_words(reply)
    if not words:
        return 1.0
    return sum(_found(w, have) for w in words) / len(words)


def asks_about_notes(question: str, notes: str, known: str = "") -> bool:
    """Whether a student's question names anything its section's notes talk about, beyond the
    words of `known` (the section's title and the topic), when the notes have any.

    A small student often asks a question about nothing ("What is the answer to this question?",
    "What's a good question to ask someone who knows Quillfeather Kites?"); the teacher then
    answers with any fact, and the pair would teach the student to answer an empty question with
    that fact. Such a question is replaced by one about the section."""
    have, named = _words(notes), _words(known)
    specific = {w for w in have if not _found(w, named)}
    if any(map(_is_content, specific)):
        have = specific
    return any(_found(w, have) for w in _content_words(question))


def mentions(text: str, subject: str) -> bool:
    """Whether `text` names `subject`: every content word of it ("Which Quillfeather kites sell
    best?" names "Quillfeather Kites"; "Which kites sell best?" could be about anyone's)."""
    have = _words(text)
    return all(_found(w, have) for w in _content_words(subject))


def _words(text: str) -> set[str]:
    """The words of a text, lowercased, a possessive's "'s" dropped ("Vellmoor's" is "vellmoor")."""
    return {w.removesuffix("'s") for w in re.findall(r"[a-z0-9']+", text.lower().replace(",", ""))}


def _content_words(text: str) -> list[str]:
    """Numbers, and words of four or more letters that are not function words."""
    return [w for w in re.findall(r"[a-z0-9']+", text.lower().replace(",", "")) if _is_content(w)]


def _is_content(word: str) -> bool:
    return (word.isdigit() or len(word) >= 4) and word not in _STOPWORDS


def _found(word: str, have: set[str]) -> bool:
    word = word.removesuffix("'s")
    return word in have or word.rstrip("s") in have or word + "s" in have
