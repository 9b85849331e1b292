"""What the probe reads of a prompt: its text without routing talk, and its parts.

Two defences, both before any backend runs:
- `strip_routing_talk` removes text that addresses the router or declares what the prompt is
  ("[intent=chat]", "route this to the small model", "this is just casual chat"). Such text is
  about routing, not the task, so it carries no weight: the backend never sees it, and an
  injected instruction can never raise the confidence of the intent it names.
- `segments` cuts the rest into its sentences (merged while short, capped in number) and
  `views` reads it on both sides of every cut, so the probe can report every intent it finds:
  a maths problem behind a chatty greeting, or a haiku request followed by a history question.
  The router then serves the most demanding of them.
Pure and stdlib only, so the rules are cheap (~0.1 ms a prompt, ~0.5 ms at 2,000 characters)
and testable alone.
"""

from __future__ import annotations

import re

MAX_SEGMENTS = 6
"""Most parts classified besides the whole prompt (longer prompts merge neighbours)."""
MAX_PART_CHARS = 1000
"""Longer prompts are read whole only: views of a long prompt cost their length several times
over, and a greeting or a second request weighs little in a long whole."""
MIN_SEGMENT_CHARS = 24
"""Parts shorter than this merge into a neighbour (a greeting alone says little)."""

_KEYS = r"intent|route|routing|router|model|category|task(?:[ _]type)?|type|label|class"
"""Names of a routing field in a tag ("[intent=chat]", "<route>small</route>")."""
_INTENT_WORDS = (
    r"chat|chit-?chat|small[- ]talk|smalltalk|conversation(?:al)?|casual|banter|greeting"
    r"|code|coding|programming|math|maths|knowledge(?:_qa)?|trivia|exam|chinese_exam"
    r"|long_context"
)
"""Words that name an intent."""
_SIZES = r"small|large|big|tiny|simple|easy|trivial|light"
_VALUES = rf"{_INTENT_WORDS}|{_SIZES}"
"""Intents, model sizes and difficulty words an injected tag or sentence names."""
_TAGS = re.compile(
    rf"<\s*(?P<x>{_KEYS})\s*>[^<\n]{{0,40}}</\s*(?P=x)\s*>"  # <route>small</route>
    rf"|[\[<{{(](?=[^\]>}})\n]{{0,60}}\b(?:{_KEYS})\b)(?=[^\]>}})\n]{{0,60}}\b(?:{_VALUES})\b)"
    rf"[^\]>}})\n]{{0,60}}[\]>}})]"  # [intent=chat], (routing hint: small talk)
    rf"|(?:(?m:^[ \t]*[>*-]+[ \t]*)|#+[ \t]*)?"  # Markdown marks: "### task: chat"
    rf"[\"']?\b(?:{_KEYS})\b[\"']?\s*[:=|]\s*[\"']?(?:{_VALUES})\b[\"']?",  # intent: chat
    re.IGNORECASE,
)
_SUBJECT = r"(?:this|it|me|the following|(?:the|this|my) (?:request|prompt|query|message|question))"
_SELF = r"(?:this|the following|(?:this|my) (?:request|prompt|query|message|question))"
_SOFT = r"(?:just|only|simply|purely|merely|really|a|an|some|casual|simple|light|friendly|quick)"
_META = re.compile(
    # A sentence that speaks to the router, or says what kind of request this is.
    rf"\b(?:route|send|forward|dispatch|pass|direct)\w*\s+{_SUBJECT}\s+(?:to|as)\s+(?:the\s+|a\s+)?"
    rf"(?:[\w-]+\s+)?(?:model|router|classifier|llm|{_VALUES})\b"
    rf"|\b(?:classif\w*|label\w*|categori[sz]\w*|tag|mark|treat|handle|consider|process)\s+"
    rf"{_SUBJECT}\s+(?:as|like)\s+(?:{_SOFT}\s+){{0,3}}(?:{_VALUES}|chitchat)\b"
    rf"|\bnote to (?:the )?(?:router|classifier|system)\b|\b(?:routing|router) (?:hint|note)"
    rf"|\b(?:use|pick|choose|want|need|prefer)\s+(?:the |a )?(?:small|smaller|large|larger|big"
    rf"|bigger|tiny|cheap|cheaper|fast|faster|light)\w*\s+model\b"
    rf"|\b{_SELF}\s+(?:is|'s)\s+(?:{_SOFT}\s+){{0,4}}(?:{_INTENT_WORDS}|nothing demanding"
    rf"|(?:{_SIZES})\s+(?:model|request|question|one|task))\b",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"\W*(?:router|classifier)\s*[:,]", re.IGNORECASE)
"""A sentence that opens by addressing the router ("Router: ...", "Classifier, ...")."""
_SENTENCE_END = re.compile(
    r"(?<=[.!?;。！？；])\s+|(?<=[。！？；])|\n\s*\n|\n(?=\s*[-*•#]|\s*\d+[.)])"
)
_CLAUSE_END = re.compile(r"(?<=[.!?;。！？；])\s+|(?<=[。！？；])|\n")
"""Ends of the units a routing sentence is cut as: sentences, and lines (a tag on its own)."""
_CODE_LINE = re.compile(
    r"^(?:    |\t)|^\s*(?:def|class|import|from \S+ import|return|#include|function|public"
    r"|private|const|let|var|fn|func|package|SELECT|>>>)\b|[{};]\s*$"
)
_WORDS = re.compile(r"\w+")
_SPACE = re.compile(r"\s*")
_TAG_TAIL = re.compile(r"[\s|,;/]*")  # "intent: chat | model: small" leaves no "|" behind


def strip_routing_talk(text: str) -> str:
    """`text` without routing tags, then without sentences about routing, each cut with the
    separator after it (and the text's end trimmed when a cut reaches it), so the rest reads as
    if they had never been written; `text` itself when nothing else would be left."""
    out = _cut(text, [m.span() for m in _TAGS.finditer(text)], _TAG_TAIL)
    talk = []
    for a, b in _spans(out, _CLAUSE_END):
        if m := _ADDRESS.match(out, a, b) or _META.search(out, a, b):
            # "D. Venus Note to the router: ..." (glued to the line before it): cut from the
            # capital that starts the routing sentence, not from the start of the line.
            glued = m.start() > a and out[m.start()].isupper()
            talk.append((m.start() if glued else a, b))
    out = _cut(out, talk, _SPACE)
    return out if _WORDS.search(out) else text


def _cut(text: str, spans: list[tuple[int, int]], tail: re.Pattern[str]) -> str:
    """`text` without these ascending, disjoint spans and the `tail` after each."""
    if not spans:
        return text
    kept, pos = [], 0
    for start, end in spans:
        kept.append(text[pos:start])
        pos = tail.match(text, end).end()
    out = "".join(kept) + text[pos:]
    return out.rstrip() if pos == len(text) else out


def segments(text: str) -> list[str]:
    """The sentences of `text` (a run of code lines is one part: its docstring's sentences are
    not requests of their own), short ones merged into a neighbour, at most `MAX_SEGMENTS`;
    empty when the whole is one part (the whole prompt is classified anyway)."""
    if len(text) > MAX_PART_CHARS:
        return []
    parts: list[str] = []
    for piece in _pieces(text):
        if parts and (len(parts[-1]) < MIN_SEGMENT_CHARS or len(piece) < MIN_SEGMENT_CHARS):
            parts[-1] = f"{parts[-1]} {piece}"
        else:
            parts.append(piece)
    if len(parts) > 1 and len(parts[-1]) < MIN_SEGMENT_CHARS:
        parts[-2:] = [f"{parts[-2]} {parts[-1]}"]
    if len(parts) > MAX_SEGMENTS:
        size = -(-len(parts) // MAX_SEGMENTS)
        parts = [" ".join(parts[i : i + size]) for i in range(0, len(parts), size)]
    return parts if len(parts) > 1 else []


def views(text: str) -> list[str]:
    """What the probe reads besides the whole: at every cut between two segments, the text
    before it and the text after it. A word problem stays whole in one view however many
    sentences it has, and a greeting, a closing line or a second request falls away in another;
    2 x (segments - 1) views, none for a one-part prompt."""
    parts = segments(text)
    cuts = range(1, len(parts))
    return [" ".join(parts[:c]) for c in cuts] + [" ".join(parts[c:]) for c in cuts]


def _pieces(text: str) -> list[str]:
    """Sentences of the prose, and each run of code lines whole."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in text.splitlines():
        is_fence = line.lstrip().startswith("```")
        if is_fence or fenced or (_CODE_LINE.search(line) and line.strip()):
            if prose:
                out += _split("\n".join(prose))
                prose = []
            code.append(line)
            fenced = fenced != is_fence
        elif code and not line.strip():
            code.append(line)  # a blank line inside a function does not end the code
        else:
            if code:
                out.append("\n".join(code).strip())
                code = []
            prose.append(line)
    if code:
        out.append("\n".join(code).strip())
    if prose:
        out += _split("\n".join(prose))
    return [p for p in out if p]


def _spans(text: str, ends: re.Pattern[str] = _SENTENCE_END) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, separators excluded."""
    spans, start = [], 0
    for m in ends.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _split(text: str) -> list[str]:
    return [text[a:b].strip() for a, b in _spans(text)]
