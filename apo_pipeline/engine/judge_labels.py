"""Which tokens an LLM judge's labels are, decided by what the judge model actually predicts.

A label such as "A" has two single-token spellings in most real vocabularies: "A" and " A". Which
one the judge emits depends on the template and chat rendering ("Answer:" is usually followed by
" A"; the first token of a chat assistant turn by "A"). `label_variants` lists the spellings under
which both labels are single, distinct, known tokens; `choose_variant` picks the one whose two
tokens carry the most next-token probability on a few rendered probe comparisons (`PROBES`, both
orders). Pure Python, no transformers import (preflight uses it too): the engine call that produces
the top-k log-probs is the backend's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class LabelTokenizer(Protocol):
    """What the label check uses of a tokenizer: a transformers one (the judge) or preflight's
    `tokenizer_files.FileTokenizer`."""

    unk_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


PREFIXES = ("", " ")

# (prompt, a clearly better response, a clearly worse one): shown in both orders at start-up.
PROBES: tuple[tuple[str, str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris.", "Bananas are yellow."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 is a kind of fish."),
    ("Name a color of the sky on a clear day.", "Blue.", "The sky is made of cheese."),
    ("Write a greeting.", "Hello! How are you today?", "asdf qwer zxcv"),
)


@dataclass(frozen=True)
class LabelVariant:
    """One spelling of the two labels (`prefix` + label) and their token ids."""

    prefix: str
    texts: tuple[str, str]
    ids: tuple[int, int]

    @property
    def name(self) -> str:
        """How the choice is logged: the two label texts, e.g. "' A'/' B'"."""
        return "/".join(repr(t) for t in self.texts)


def _single_token(tokenizer: LabelTokenizer, text: str) -> int | None:
    tokens = tokenizer.encode(text, add_special_tokens=False)
    if len(tokens) != 1 or tokens[0] == tokenizer.unk_token_id:
        return None
    return tokens[0]


def label_variants(tokenizer: LabelTokenizer, labels: tuple[str, str]) -> list[LabelVariant]:
    """The spellings ("A" and " A", ...) under which both labels are single, distinct, known tokens.

    ValueError naming `judge.labels` when there is none."""
    found = []
    for prefix in PREFIXES:
        texts = (prefix + labels[0], prefix + labels[1])
        ids = tuple(_single_token(tokenizer, t) for t in texts)
        if None not in ids and ids[0] != ids[1]:
            found.append(LabelVariant(prefix, texts, ids))  # type: ignore[arg-type]
    if not found:
        counts = [len(tokenizer.encode(p + lab, add_special_tokens=False)) for p in PREFIXES for lab in labels]
        raise ValueError(
            f"judge.labels: {labels} are not two distinct single tokens under the judge's tokenizer, with or without "
            f"a leading space (token counts {counts}); choose labels that are one token each"
        )
    return found


def probe_items() -> list[tuple[str, str, str]]:
    """The probe comparisons, each in both orders."""
    return [item for p, a, b in PROBES for item in ((p, a, b), (p, b, a))]


def label_mass(variant: LabelVariant, tops: Sequence[dict[int, float]]) -> float:
    """Mean over probes of P(label a) + P(label b) at the verdict position (0 where not in the top-k)."""
    if not tops:
        return 0.0
    return sum(sum(math.exp(top[i]) for i in variant.ids if i in top) for top in tops) / len(tops)


def choose_variant(variants: Sequence[LabelVariant], tops: Sequence[dict[int, float]]) -> tuple[LabelVariant, dict[str, float]]:
    """The variant with the largest `label_mass` on the probes' top-k log-probs (the first on a tie),
    and every variant's mass by name."""
    masses = {v.name: label_mass(v, tops) for v in variants}
    best = max(variants, key=lambda v: masses[v.name])  # max keeps the first of equal masses
    return best, masses
