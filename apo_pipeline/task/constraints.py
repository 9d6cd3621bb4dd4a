"""Verifiable instruction constraints, in the manner of IFEval: each states itself as one fixed
sentence, is parsed back from any prompt text containing that sentence, and checks a response
with plain string rules (no model). Pure Python.

| kind | sentence in the prompt | satisfied when |
| --- | --- | --- |
| max_words N | Answer in at most N words. | 1 <= words <= N |
| min_words N | Answer in at least N words. | words >= N |
| lowercase | Use only lowercase letters in your entire answer. | a letter, and no uppercase letter |
| uppercase | Write your entire answer in capital letters. | a letter, and no lowercase letter |
| keyword K | Include the word "K" in your answer. | K appears as a whole word (any case) |
| forbidden K | Do not use the word "K". | K never appears as a whole word (any case) |
| bullets N | Answer with exactly N bullet points, each on its own line starting with "- ". | exactly N lines start with "- " or "* " |
| end_phrase P | End your answer with the exact phrase "P". | the answer (trailing spaces cut) ends with P |
| start_word W | Start your answer with the word "W". | the first word is W (any case) |
| no_commas | Do not use any commas. | no "," |
| quoted | Wrap your entire answer in double quotation marks. | the answer starts and ends with a double quote |

Words are runs of letters and digits (apostrophes and hyphens inside a word keep it one word).
An answer without any word satisfies no constraint, so silence never scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
BULLET_RE = re.compile(r"^\s*[-*]\s+\S", re.MULTILINE)
QUOTES = ('"', "“", "”")


@dataclass(frozen=True)
class Kind:
    """One constraint kind: its sentence (`{}` = the argument, or none) and the argument's type."""

    name: str
    sentence: str
    arg: type | None = None

    def pattern(self) -> re.Pattern[str]:
        """The sentence as a regex; group 1 is the argument."""
        head, _, tail = re.escape(self.sentence).partition(r"\{\}")
        if self.arg is None:
            return re.compile(head)
        group = r"(\d+)" if self.arg is int else r"([^\"]+)"
        return re.compile(head + group + tail)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("max_words", "Answer in at most {} words.", int),
    Kind("min_words", "Answer in at least {} words.", int),
    Kind("lowercase", "Use only lowercase letters in your entire answer."),
    Kind("uppercase", "Write your entire answer in capital letters."),
    Kind("keyword", 'Include the word "{}" in your answer.', str),
    Kind("forbidden", 'Do not use the word "{}".', str),
    Kind("bullets", 'Answer with exactly {} bullet points, each on its own line starting with "- ".', int),
    Kind("end_phrase", 'End your answer with the exact phrase "{}".', str),
    Kind("start_word", 'Start your answer with the word "{}".', str),
    Kind("no_commas", "Do not use any commas."),
    Kind("quoted", "Wrap your entire answer in double quotation marks."),
)}
PATTERNS = {name: kind.pattern() for name, kind in KINDS.items()}


def words(text: str) -> list[str]:
    """The words of `text` (see the module docstring)."""
    return WORD_RE.findall(text)


def _has_word(text: str, word: str) -> bool:
    """Whether `word` (or phrase) occurs in `text` as a whole word, ignoring case."""
    return re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Constraint:
    """One constraint: a kind of `KINDS` and its argument (a count, a word or a phrase)."""

    kind: str
    arg: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown constraint kind {self.kind!r}; known: {', '.join(KINDS)}")
        want = KINDS[self.kind].arg
        if (want is None) != (self.arg is None) or (want is not None and not isinstance(self.arg, want)):
            raise ValueError(f"constraint {self.kind}: argument {self.arg!r} should be {want.__name__ if want else 'None'}")
        if isinstance(self.arg, int) and self.arg < 1:
            raise ValueError(f"constraint {self.kind}: count must be >= 1, got {self.arg}")
        if isinstance(self.arg, str) and (not self.arg.strip() or '"' in self.arg):
            raise ValueError(f"constraint {self.kind}: {self.arg!r} must be non-empty and free of double quotes")

    def describe(self) -> str:
        """The sentence that states this constraint in a prompt."""
        sentence = KINDS[self.kind].sentence
        return sentence if self.arg is None else sentence.replace("{}", str(self.arg))

    def check(self, response: str) -> bool:
        """Whether `response` satisfies this constraint."""
        found = words(response)
        if not found:
            return False
        text = response.strip()
        k, arg = self.kind, self.arg
        if k == "max_words":
            return len(found) <= arg
        if k == "min_words":
            return len(found) >= arg
        if k == "lowercase":
            return any(c.isalpha() for c in text) and not any(c.isupper() for c in text)
        if k == "uppercase":
            return any(c.isalpha() for c in text) and not any(c.islower() for c in text)
        if k == "keyword":
            return _has_word(text, arg)
        if k == "forbidden":
            return not _has_word(text, arg)
        if k == "bullets":
            return len(BULLET_RE.findall(text)) == arg
        if k == "end_phrase":
            return text.endswith(arg)
        if k == "start_word":
            return found[0].casefold() == arg.casefold()
        if k == "no_commas":
            return "," not in text
        return len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES  # quoted


def parse_constraints(text: str) -> list[Constraint]:
    """Every constraint stated in `text`, in the order its sentences appear."""
    found = []
    for name, pattern in PATTERNS.items():
        arg_type = KINDS[name].arg
        for m in pattern.finditer(text):
            arg = None if arg_type is None else arg_type(m.group(1))
            found.append((m.start(), Constraint(name, arg)))
    return [c for _, c in sorted(found, key=lambda item: item[0])]


def satisfied(constraints: list[Constraint], response: str) -> list[bool]:
    """Per constraint, whether `response` satisfies it."""
    return [c.check(response) for c in constraints]
