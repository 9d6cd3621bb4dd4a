"""The verifiable constraints (task/constraints.py): every kind satisfied, violated and at its edges,
their sentences round-trip through the parser, and the built-in instruction task built from them."""

from __future__ import annotations

from collections import Counter

import pytest

from apo_pipeline.task.constraints import KINDS, Constraint, parse_constraints, satisfied, words
from apo_pipeline.task.instructions import (
    CONFLICTS, TEMPLATES, TOPICS, all_instructions, constraint_reward, draw_constraints, instruction_prompts,
)
from apo_pipeline.task.prompts import load_prompts
from apo_pipeline.task.reward_judge import load_reward_fn

# kind -> (argument, satisfied examples, violated examples)
CASES: dict[str, tuple[object, list[str], list[str]]] = {
    "max_words": (3, ["one two three", "Yes.", "a-b c d", "don't stop now"], ["one two three four", "", "   ", "!!!"]),
    "min_words": (3, ["one two three", "one, two, three, four"], ["one two", "one-two-three", "", "..."]),
    "lowercase": (None, ["all lower case here.", "numbers 123 are fine", "ünïcode lower"], ["One capital", "ÉCOLE", "", "123"]),
    "uppercase": (None, ["ALL CAPS HERE!", "NUMBERS 123 OK"], ["ALL CAPS but one", "", "123 456"]),
    "keyword": ("soil", ["Good soil matters.", "SOIL!", "soil"], ["Soils are different", "subsoil", "no such word", ""]),
    "forbidden": ("garden", ["A yard with plants.", "gardening is fine", "gardens too"], ["My garden.", "GARDEN", "the garden's gate", ""]),
    "bullets": (
        2,
        ["- one\n- two", "* one\n* two", "Intro:\n- one\n  - two", "- a\n\n- b\nend"],
        ["- one", "- one\n- two\n- three", "-one\n-two", "one - two - three", ""],
    ),
    "end_phrase": (
        "That is all.",
        ["Here it is. That is all.", "That is all.  \n", "text\nThat is all."],
        ["That is all", "That is all. Bye.", "that is all.", ""],
    ),
    "start_word": ("Yes", ["Yes, I can.", "yes it is", '"Yes" he said', "- Yes first"], ["No. Yes.", "Yesterday was fine", "", "Yes-man says"]),
    "no_commas": (None, ["No commas at all.", "semi; colons: fine"], ["one, two", "a,b", ""]),
    "quoted": (None, ['"A quoted answer."', "“Curly quotes.”", '  "padded"  '], ['"unclosed', 'A "partly" quoted answer', '"', ""]),
}


def test_every_kind_has_cases() -> None:
    assert set(CASES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_checker(kind: str) -> None:
    arg, good, bad = CASES[kind]
    c = Constraint(kind, arg)  # type: ignore[arg-type]
    for text in good:
        assert c.check(text), f"{kind}({arg!r}) should accept {text!r}"
    for text in bad:
        assert not c.check(text), f"{kind}({arg!r}) should reject {text!r}"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_sentence_round_trips(kind: str) -> None:
    arg = CASES[kind][0]
    c = Constraint(kind, arg)  # type: ignore[arg-type]
    assert parse_constraints(f"Write something. {c.describe()}") == [c]
    assert parse_constraints(f"<|im_start|>user\n{c.describe()}<|im_end|>\n") == [c]  # inside a chat template


def test_words_and_edges() -> None:
    assert words("It's a well-known fact, isn't it?") == ["It's", "a", "well-known", "fact", "isn't", "it"]
    assert words("snake_case 42 x2") == ["snake", "case", "42", "x2"]
    assert Constraint("max_words", 1).check("word") and not Constraint("max_words", 1).check("two words")
    assert Constraint("min_words", 1).check("word")


def test_bad_constraints_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown constraint kind 'shout'"):
        Constraint("shout")
    with pytest.raises(ValueError, match="max_words: argument None should be int"):
        Constraint("max_words")
    with pytest.raises(ValueError, match="should be None"):
        Constraint("lowercase", 3)
    with pytest.raises(ValueError, match="count must be >= 1"):
        Constraint("bullets", 0)
    with pytest.raises(ValueError, match="free of double quotes"):
        Constraint("keyword", 'say "hi"')


def test_parse_keeps_order_and_repeats() -> None:
    text = 'Do not use any commas. Include the word "a" in your answer. Include the word "b" in your answer.'
    assert parse_constraints(text) == [Constraint("no_commas"), Constraint("keyword", "a"), Constraint("keyword", "b")]
    assert parse_constraints("Reverse 12345.") == []


def test_instruction_set() -> None:
    items = all_instructions()
    assert len(items) == len(TEMPLATES) * len(TOPICS) == 432
    assert len({i.text for i in items}) == len(items)
    splits = Counter(i.split for i in items)
    assert splits["eval"] == 77 and splits["train"] == 355  # about 20% held out, fixed
    kinds = Counter(c.kind for i in items for c in i.constraints)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 50
    for i in items:
        assert 1 <= len(i.constraints) <= 3
        assert tuple(parse_constraints(i.text)) == i.constraints  # the text carries its constraints
        names = [c.kind for c in i.constraints]
        assert len(set(names)) == len(names)
        assert not any(frozenset((x, y)) in CONFLICTS for x in names for y in names if x != y)
    assert draw_constraints(3, 5) == draw_constraints(3, 5)


def test_instruction_prompts_and_sources() -> None:
    train, held = instruction_prompts("train"), instruction_prompts("eval")
    assert len(train) == 355 and len(held) == 77 and not set(train) & set(held)
    assert instruction_prompts("train", 10, seed=1) == instruction_prompts("train", 10, seed=1)
    assert instruction_prompts("train", 10, seed=1) != instruction_prompts("train", 10, seed=2)
    assert sorted(instruction_prompts("train", seed=5)) == sorted(train)
    with pytest.raises(ValueError, match="has 77 eval prompts; asked for 100"):
        instruction_prompts("eval", 100)
    loaded = load_prompts("builtin:instructions", split="eval", limit=8, seed=3)
    assert loaded.prompts == instruction_prompts("eval", 8, seed=3) and loaded.source == "builtin:instructions"
    with pytest.raises(ValueError, match="unknown built-in prompt source 'builtin:poems'"):
        load_prompts("builtin:poems", limit=3)


def test_constraint_reward() -> None:
    prompt = 'Give some advice about baking bread. Include the word "flour" in your answer. Do not use any commas.'
    reward = load_reward_fn("builtin:constraints")
    assert reward is constraint_reward
    assert reward(prompt, "Use good flour and bake it hot.") == 1.0
    assert reward(prompt, "Use good flour, and bake it hot.") == 0.5
    assert reward(prompt, "Bake, bake, bake.") == 0.0
    assert reward(prompt, "") == 0.0
    assert reward([{"role": "user", "content": prompt}], "flour") == 1.0  # a conversation: its user turns
    with pytest.raises(ValueError, match="states no constraint"):
        reward("Reverse 123.", "321")
    with pytest.raises(ValueError, match="unknown built-in; known: builtin, builtin:constraints"):
        load_reward_fn("builtin:vibes")
    items = all_instructions()
    assert all(satisfied(list(i.constraints), "") == [False] * len(i.constraints) for i in items)
