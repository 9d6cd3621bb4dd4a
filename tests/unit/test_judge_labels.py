"""Label probing of the LLM judge (engine/judge_labels.py) on real tokenizers' spellings, and the
judge report's figures (report/judge_eval.py); pure Python, no engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apo_pipeline.engine.judge_labels import PROBES, LabelVariant, choose_variant, label_mass, label_variants, probe_items
from apo_pipeline.engine.llm_judge import verdict
from apo_pipeline.report.judge_eval import (
    JudgedPair, combined, format_report, judge_report, read_pairs_file, reference_sign, score_pairs,
)
from apo_pipeline.task.tokenizer import build_tokenizer


class Vocab:
    """A tokenizer stand-in: whole strings in `vocab` are one token, anything else is one per character."""

    unk_token_id = 0

    def __init__(self, vocab: list[str]) -> None:
        self.ids = {t: i + 1 for i, t in enumerate(vocab)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[text]] if text in self.ids else [100 + ord(c) for c in text]


def test_variants_with_and_without_a_leading_space() -> None:
    both = label_variants(Vocab(["A", "B", " A", " B"]), ("A", "B"))
    assert [(v.prefix, v.texts, v.ids) for v in both] == [("", ("A", "B"), (1, 2)), (" ", (" A", " B"), (3, 4))]
    spaced = label_variants(Vocab([" Yes", " No"]), ("Yes", "No"))
    assert [v.texts for v in spaced] == [(" Yes", " No")]  # only the spaced spelling is one token each
    with pytest.raises(ValueError, match=r"judge.labels: \('Yes', 'No'\) are not two distinct single tokens"):
        label_variants(Vocab([]), ("Yes", "No"))
    tiny = label_variants(build_tokenizer(), ("A", "B"))  # the project's tokenizer: "A" and "B" only
    assert [v.prefix for v in tiny] == [""]


def test_choose_the_variant_that_carries_the_mass() -> None:
    plain, spaced = LabelVariant("", ("A", "B"), (1, 2)), LabelVariant(" ", (" A", " B"), (3, 4))
    tops = [{3: math.log(0.6), 4: math.log(0.3), 1: math.log(0.01)}, {4: math.log(0.7), 9: math.log(0.2)}]
    assert label_mass(spaced, tops) == pytest.approx((0.9 + 0.7) / 2)
    assert label_mass(plain, tops) == pytest.approx(0.01 / 2)
    best, masses = choose_variant([plain, spaced], tops)
    assert best is spaced and masses == {"'A'/'B'": pytest.approx(0.005), "' A'/' B'": pytest.approx(0.8)}
    assert choose_variant([plain, spaced], [])[0] is plain  # no probe fits: the first spelling, mass 0
    assert len(probe_items()) == 2 * len(PROBES) and probe_items()[1] == (PROBES[0][0], PROBES[0][2], PROBES[0][1])


def test_verdict_reads_the_two_labels() -> None:
    assert verdict({1: -0.1, 2: -0.1, 3: -5.0}, (1, 2)) == pytest.approx(0.5)
    assert verdict({1: 0.0, 2: -1.0}, (1, 2)) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert verdict({1: -1.0, 3: -3.0}, (1, 2)) == pytest.approx(1 / (1 + math.exp(-2.0)))  # 2 gets the floor
    assert verdict({3: -0.1, 4: -2.0}, (1, 2)) is None


def test_judge_report_figures() -> None:
    nan = math.nan
    pairs = [
        JudgedPair("p", "a", "b", 0.9, 0.2, reference=1),   # both orders prefer a; right
        JudgedPair("p", "a", "b", 0.7, 0.6, reference=-1),  # orders disagree (first shown wins twice)
        JudgedPair("p", "a", "b", 0.3, nan, reference=1),   # second order asked, not scored; wrong
        JudgedPair("p", "a", "b", nan, nan, reference=1),   # nothing scored
        JudgedPair("p", "a", "b", 0.8, None, reference=0),  # second order not asked; no reference
    ]
    r = judge_report(pairs)
    assert (r["pairs"], r["asked"]) == (5, 9)
    assert r["scored"] == pytest.approx(6 / 9) and r["both_scored"] == pytest.approx(2 / 5)
    assert r["order_agreement"] == pytest.approx(0.5)
    assert r["position_bias"] == pytest.approx((0.9 + 0.2 + 0.7 + 0.6 + 0.3 + 0.8) / 6 - 0.5)
    assert r["first_wins"] == pytest.approx(4 / 6)
    # decided with a strict reference: pair 1 (0.85 -> a, right), pair 2 (0.55 -> a, wrong), pair 3 (0.3 -> b, wrong)
    assert r["reference_pairs"] == 3 and r["reference_agreement"] == pytest.approx(1 / 3)
    assert combined(pairs[1]) == pytest.approx(0.55) and combined(pairs[3]) is None
    empty = judge_report([])
    assert empty["scored"] is None and empty["reference_agreement"] is None
    assert "| order_agreement | 0.5 |" in format_report(r, "x", {"label_variant": "'A'/'B'"})


def test_pairs_file_and_scoring(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "a": "good", "b": "bad", "preferred": "a"}, {"prompt": "q", "a": "x", "b": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = read_pairs_file(path)
    assert [p.reference for p in pairs] == [1, None]
    score_pairs(pairs, lambda items: [0.8 if a == "good" else None if a == "x" else 0.4 for _, a, _ in items])
    assert (pairs[0].p_ab, pairs[0].p_ba) == (0.8, 0.4)
    assert math.isnan(pairs[1].p_ab) and pairs[1].p_ba == 0.4
    path.write_text('{"prompt": "p", "a": "x"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl: line 1: .*missing or not a string: b"):
        read_pairs_file(path)
    path.write_text('{"prompt": "p", "a": "x", "b": "y", "preferred": "c"}\n')
    with pytest.raises(ValueError, match='line 1: preferred must be "a" or "b"'):
        read_pairs_file(path)
    assert reference_sign(lambda p, t: len(t), "p", "long", "x") == 1
    assert reference_sign(lambda p, t: 0.0, "p", "a", "b") == 0
