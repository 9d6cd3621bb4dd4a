"""The built-in real-text task `builtin:instructions`: instruction prompts written for this
project, each carrying one to three verifiable constraints (task/constraints.py) stated in its text.

The prompt set is fixed: every (template, topic) pair is one prompt (12 x 36 = 432), its
constraints drawn by an RNG keyed by the pair, so the ground truth of each prompt never changes.
About 20% of the pairs (by a stable hash) form the held-out `eval` split. A seed only orders a
split. The reward `builtin:constraints` (`constraint_reward`) parses the constraints back from
the prompt text, so it scores a prompt however it was rendered (plain, or inside a chat template)
and any prompt whose text states these constraints in their sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from apo_pipeline.task.constraints import KINDS, Constraint, parse_constraints, satisfied
from apo_pipeline.task.synthetic import Prompt, stable_int

EVAL_FRACTION = 0.2
SPLITS = ("train", "eval")

TEMPLATES = (
    "Write a short note to a friend about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Give some advice about {topic}.",
    "Describe why people enjoy {topic}.",
    "Write a short blog introduction about {topic}.",
    "Summarize what a beginner should know about {topic}.",
    "Tell me something surprising about {topic}.",
    "Write a short email to a coworker about {topic}.",
    "What are the pros and cons of {topic}?",
    "Write a few sentences for a school newsletter about {topic}.",
    "Describe a typical day that involves {topic}.",
    "Give a beginner a simple plan for {topic}.",
)

# (topic phrase, the topic's own word (a `forbidden` candidate), related keywords)
TOPICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("learning to cook", "cook", ("kitchen", "recipe", "salt")),
    ("keeping houseplants alive", "plants", ("water", "sunlight", "soil")),
    ("riding a bicycle to work", "bicycle", ("helmet", "traffic", "exercise")),
    ("saving money on groceries", "money", ("budget", "list", "discount")),
    ("visiting a public library", "library", ("books", "quiet", "card")),
    ("training a new puppy", "puppy", ("treats", "patience", "leash")),
    ("learning a second language", "language", ("practice", "vocabulary", "grammar")),
    ("going camping in the mountains", "camping", ("tent", "fire", "trail")),
    ("drinking enough water", "water", ("health", "bottle", "thirst")),
    ("starting a vegetable garden", "garden", ("seeds", "tomatoes", "sunlight")),
    ("getting a good night's sleep", "sleep", ("bedtime", "dark", "rest")),
    ("writing a thank-you letter", "letter", ("gratitude", "pen", "friend")),
    ("recycling at home", "recycling", ("plastic", "paper", "bins")),
    ("playing chess", "chess", ("board", "strategy", "king")),
    ("baking bread", "bread", ("flour", "oven", "yeast")),
    ("taking the bus to school", "bus", ("ticket", "schedule", "driver")),
    ("cleaning a messy room", "room", ("clothes", "shelf", "vacuum")),
    ("preparing for a job interview", "interview", ("resume", "questions", "confidence")),
    ("learning to swim", "swim", ("pool", "breathing", "lessons")),
    ("watching the night sky", "sky", ("stars", "moon", "telescope")),
    ("making new friends at school", "friends", ("kindness", "lunch", "games")),
    ("reducing screen time", "screen", ("phone", "hobbies", "evening")),
    ("planning a birthday party", "party", ("cake", "guests", "music")),
    ("walking every day", "walking", ("shoes", "park", "heart")),
    ("reading before bed", "reading", ("novel", "lamp", "calm")),
    ("caring for an old dog", "dog", ("vet", "blanket", "walks")),
    ("packing for a short trip", "trip", ("suitcase", "clothes", "charger")),
    ("learning to play the guitar", "guitar", ("chords", "strings", "practice")),
    ("making a healthy breakfast", "breakfast", ("fruit", "oats", "eggs")),
    ("volunteering in the community", "community", ("neighbors", "time", "help")),
    ("keeping a journal", "journal", ("thoughts", "pen", "habit")),
    ("fixing a flat bicycle tire", "tire", ("pump", "patch", "wheel")),
    ("studying for an exam", "exam", ("notes", "focus", "schedule")),
    ("visiting a museum", "museum", ("art", "history", "guide")),
    ("staying cool in hot weather", "weather", ("shade", "water", "hat")),
    ("feeding birds in winter", "birds", ("seeds", "feeder", "snow")),
)

END_PHRASES = (
    "Is there anything else I can help with?", "That is all.", "Thank you for reading.", "Hope this helps!",
)
START_WORDS = ("Yes", "Today", "First", "Honestly", "Sure", "Imagine")
MAX_WORDS = (10, 15, 20, 25, 30, 40)
MIN_WORDS = (10, 15, 20, 30)
BULLETS = (2, 3, 4)
# kinds never drawn together (contradictory, or one makes the other impossible to check fairly)
CONFLICTS = frozenset(frozenset(p) for p in (
    ("lowercase", "uppercase"), ("lowercase", "end_phrase"), ("uppercase", "end_phrase"),
    ("max_words", "min_words"), ("quoted", "bullets"), ("quoted", "end_phrase"),
))
NUM_CONSTRAINTS_P = {1: 0.3, 2: 0.45, 3: 0.25}


@dataclass(frozen=True)
class Instruction:
    """One prompt of the task: its text (task sentence + constraint sentences) and constraints."""

    text: str
    constraints: tuple[Constraint, ...]
    split: str


def _draw(kind: str, keywords: tuple[str, ...], own_word: str, rng: np.random.Generator) -> Constraint:
    """A constraint of `kind` with an argument fitting the topic."""
    pick = {
        "max_words": MAX_WORDS, "min_words": MIN_WORDS, "bullets": BULLETS, "keyword": keywords,
        "end_phrase": END_PHRASES, "start_word": START_WORDS, "forbidden": (own_word,),
    }.get(kind)
    if pick is None:
        return Constraint(kind)
    arg = pick[int(rng.integers(len(pick)))]
    return Constraint(kind, int(arg) if isinstance(arg, (int, np.integer)) else arg)


def draw_constraints(template: int, topic: int) -> tuple[Constraint, ...]:
    """The constraints of prompt (template, topic): 1-3 kinds without conflicts, args by topic."""
    rng = np.random.default_rng(stable_int("instructions", template, topic))
    sizes, probs = zip(*NUM_CONSTRAINTS_P.items())
    n = int(rng.choice(sizes, p=probs))
    chosen: list[str] = []
    for kind in rng.permutation(list(KINDS)):
        if len(chosen) == n:
            break
        if all(frozenset((kind, other)) not in CONFLICTS for other in chosen):
            chosen.append(str(kind))
    _, own_word, keywords = TOPICS[topic]
    return tuple(_draw(kind, keywords, own_word, rng) for kind in chosen)


def split_of(template: int, topic: int) -> str:
    """`eval` for about EVAL_FRACTION of the (template, topic) pairs, else `train`."""
    return "eval" if stable_int("instructions-split", template, topic) % 1000 < EVAL_FRACTION * 1000 else "train"


@lru_cache(maxsize=1)
def all_instructions() -> tuple[Instruction, ...]:
    """Every prompt of the task, in (template, topic) order."""
    out = []
    for t, template in enumerate(TEMPLATES):
        for p, (topic, _, _) in enumerate(TOPICS):
            constraints = draw_constraints(t, p)
            text = " ".join([template.format(topic=topic), *(c.describe() for c in constraints)])
            out.append(Instruction(text, constraints, split_of(t, p)))
    return tuple(out)


def instruction_prompts(split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
    """`n` (default: all) prompt texts of `split`, in an order shuffled by `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    texts = [i.text for i in all_instructions() if i.split == split]
    if n is not None and not 1 <= n <= len(texts):
        raise ValueError(f"builtin:instructions has {len(texts)} {split} prompts; asked for {n}")
    order = np.random.default_rng(stable_int("instructions-order", seed, split)).permutation(len(texts))
    return [texts[i] for i in order[:n]]


def constraint_reward(prompt: Prompt, response: str) -> float:
    """`builtin:constraints`: the fraction in [0, 1] of the prompt's constraints `response` satisfies.

    The constraints are parsed from the prompt text (for a conversation: its user messages);
    ValueError when the prompt states none."""
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m.get("role") == "user")
    constraints = parse_constraints(text)
    if not constraints:
        raise ValueError(f"builtin:constraints: the prompt states no constraint: {text[:80]!r}")
    return sum(satisfied(constraints, response)) / len(constraints)
