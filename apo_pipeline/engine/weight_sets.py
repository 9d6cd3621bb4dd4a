"""Named copies of a learner's full weights, kept beside training: a reference policy, APO's thetahat_t.

Each copy is fp32 on CPU and spread over the ranks (each keeps the weights it owns, round robin:
`full_weights.owner_of`), so a copy costs 4 bytes x parameters / W per rank, whatever the ZeRO
stage. `using(name)` swaps a copy into the model for a forward pass or an export and puts the
training weights back bit for bit (both are fp32 masters); the optimizer state is never touched.
A swap is skipped when the copy still equals the model (no step or weight write since `keep`),
so computing reference log-probs at a round's start costs nothing extra. Every method is a
collective under ZeRO: all ranks call it together.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from apo_pipeline.engine.full_weights import snapshot_masters, write_masters_

FILE = "kept_{name}_rank{rank}_of{world}.pt"
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class WeightSets:
    """Named kept copies of `module`'s weights (this rank's share of each) and the module's version
    (bumped by the owner whenever training or a write changes the weights)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.sets: dict[str, dict[str, Tensor]] = {}
        self.kept_at: dict[str, int] = {}  # the version each copy was taken at (-1: unknown, e.g. loaded)
        self.version = 0

    def __contains__(self, name: str) -> bool:
        return name in self.sets

    def changed(self) -> None:
        """Record that the module's weights changed (a train step, an extrapolation, a load)."""
        self.version += 1

    def keep(self, name: str) -> None:
        """Copy the current weights under `name` (replacing an older copy of that name)."""
        if not NAME.match(name):
            raise ValueError(f"weight set name {name!r}: use lower-case letters, digits and _")
        self.put(name, snapshot_masters(self.module), self.version)

    def put(self, name: str, owned: dict[str, Tensor], version: int = -1) -> None:
        """Store this rank's share `owned` under `name`, equal to the module at `version` (-1: not)."""
        self.sets[name] = owned
        self.kept_at[name] = version

    def take(self, name: str) -> dict[str, Tensor]:
        """This rank's share of copy `name` (KeyError naming it when there is none)."""
        if name not in self.sets:
            raise KeyError(f"no kept weights named {name!r} (kept: {', '.join(self.sets) or 'none'})")
        return self.sets[name]

    def drop(self, name: str) -> None:
        """Forget copy `name` (no error if absent)."""
        self.sets.pop(name, None)
        self.kept_at.pop(name, None)

    @contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Inside the block the module holds copy `name` (None: the training weights, no swap)."""
        kept = None if name is None else self.take(name)
        if kept is None or self.kept_at[name] == self.version:
            yield
            return
        live = snapshot_masters(self.module)
        write_masters_(self.module, kept)
        try:
            yield
        finally:
            write_masters_(self.module, live)

    def save(self, directory: Path, rank: int, world: int) -> None:
        """One file per copy for this rank in `directory`."""
        for name, owned in self.sets.items():
            torch.save(owned, directory / FILE.format(name=name, rank=rank, world=world))

    def load(self, directory: Path, rank: int, world: int) -> None:
        """Replace every copy by those saved in `directory` for this rank (none saved: none kept)."""
        self.sets, self.kept_at = {}, {}
        suffix = FILE.format(name="", rank=rank, world=world).removeprefix("kept_")
        for path in sorted(directory.glob(FILE.format(name="*", rank=rank, world=world))):
            name = path.name.removeprefix("kept_").removesuffix(suffix)
            self.put(name, torch.load(path, map_location="cpu", weights_only=True))
