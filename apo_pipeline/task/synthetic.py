"""The built-in synthetic task: reverse a short digit sequence.

A prompt is ``"reverse:31415="``; the ideal response is ``"51413"``.
The latent reward r*(prompt, response) is computed from text alone, so it scores
any model's output. Responses are read as one symbol per non-space character, so
``"51413"`` and ``"5 1 4 1 3"`` score the same and any extra word costs length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DIGITS: tuple[str, ...] = tuple("0123456789")
INSTRUCTION = "reverse"
PROMPT_END = "="
MIN_LEN, MAX_LEN = 3, 6
EVAL_FRACTION = 0.2
MAX_PROMPTS = 100_000  # per call; about 222k distinct eval prompts exist
SPLITS = ("train", "eval")

Message = dict[str, str]
Prompt = str | list[Message]


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: the string itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def format_prompt(digits: Sequence[str]) -> str:
    """``["3", "1", "4"]`` -> ``"reverse:314="``."""
    return f"{INSTRUCTION}:{''.join(digits)}{PROMPT_END}"


def parse_digits(prompt: Prompt) -> list[str]:
    """The digit sequence a prompt asks to reverse (its digit characters, in order)."""
    return [c for c in prompt_text(prompt) if c in DIGITS]


def target(prompt: Prompt) -> list[str]:
    """The ideal response as a list of symbols: the prompt's digits reversed."""
    return parse_digits(prompt)[::-1]


def latent_reward(prompt: Prompt, response: str) -> float:
    """r*(x, y) in [-1, 1]: positional accuracy minus a length penalty.

    With t = target(x) (length L) and y the non-space characters of ``response``:
    ``r* = #{i : y[i] == t[i]} / L - 0.5 * |len(y) - L| / L``, clipped to [-1, 1].
    The ideal response scores 1.0; padding, repetition and truncation all score less.
    """
    want = target(prompt)
    if not want:
        raise ValueError(f"prompt has no digits to reverse: {prompt_text(prompt)!r}")
    got = [c for c in response if not c.isspace()]
    n = len(want)
    hits = sum(a == b for a, b in zip(got, want))
    score = hits / n - 0.5 * abs(len(got) - n) / n
    return float(min(1.0, max(-1.0, score)))


def stable_int(*parts: object) -> int:
    """A process-independent 64-bit integer hash of ``parts`` (never Python's ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Confusion:
    """Systematic demonstration errors: digit d is written as ``wrong[d]`` with prob ``q[d]``.

    ``wrong`` is a derangement (never maps a digit to itself). ``n_bad`` digits get
    q in [0.6, 0.75] (greedy decoding copies the error), the rest q in [0, 0.25].
    """

    wrong: dict[str, str]
    q: dict[str, float]

    @classmethod
    def from_seed(cls, seed: int, n_bad: int = 4) -> Confusion:
        rng = np.random.default_rng(stable_int("confusion", seed))
        order = [DIGITS[i] for i in rng.permutation(len(DIGITS))]
        wrong = {d: order[(i + 1) % len(order)] for i, d in enumerate(order)}
        q = {
            d: float(rng.uniform(0.6, 0.75) if i < n_bad else rng.uniform(0.0, 0.25))
            for i, d in enumerate(order)
        }
        return cls(wrong=wrong, q=q)


class SyntheticTask:
    """Digit reversal with seeded prompt splits and seeded imperfect demonstrations.

    Split membership is a stable hash of (seed, digits), so ``train`` and ``eval``
    prompts are disjoint for a seed; ``prompts(n, split)`` is deterministic by seed.
    """

    def __init__(self, seed: int = 0, length_error_prob: float = 0.1) -> None:
        self.seed = seed
        self.length_error_prob = length_error_prob
        self.confusion = Confusion.from_seed(seed)

    def split_of(self, digits: Sequence[str]) -> str:
        """``"eval"`` for about ``EVAL_FRACTION`` of digit sequences, else ``"train"``."""
        bucket = stable_int("split", self.seed, "".join(digits)) % 1000
        return "eval" if bucket < EVAL_FRACTION * 1000 else "train"

    def sample_digits(self, rng: np.random.Generator, split: str) -> list[str]:
        """One random digit sequence (length uniform in [MIN_LEN, MAX_LEN]) from ``split``."""
        _check_split(split)
        while True:
            n = int(rng.integers(MIN_LEN, MAX_LEN + 1))
            digits = [DIGITS[i] for i in rng.integers(0, len(DIGITS), size=n)]
            if self.split_of(digits) == split:
                return digits

    def prompts(self, n: int, split: str = "train") -> list[str]:
        """``n`` distinct prompts of ``split``, deterministic by seed."""
        _check_split(split)
        if n > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per call, got {n}")
        rng = np.random.default_rng(stable_int("prompts", self.seed, split))
        seen: dict[str, None] = {}
        while len(seen) < n:
            seen.setdefault(format_prompt(self.sample_digits(rng, split)))
        return list(seen)

    @staticmethod
    def ideal(prompt: Prompt) -> str:
        """The response with r* = 1.0."""
        return "".join(target(prompt))

    @staticmethod
    def reward(prompt: Prompt, response: str) -> float:
        """The latent reward r* (see ``latent_reward``)."""
        return latent_reward(prompt, response)

    def demonstration(self, prompt: Prompt, rng: np.random.Generator) -> str:
        """A fluent but systematically wrong response for the SFT warm-up.

        Each target digit d becomes ``confusion.wrong[d]`` with prob ``confusion.q[d]``;
        with prob ``length_error_prob`` one digit is then dropped or duplicated.
        """
        conf = self.confusion
        out = [conf.wrong[d] if rng.random() < conf.q[d] else d for d in target(prompt)]
        if rng.random() < self.length_error_prob:
            i = int(rng.integers(len(out)))
            if rng.random() < 0.5 and len(out) > 1:
                del out[i]
            else:
                out.insert(i, out[i])
        return "".join(out)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
