"""Kept weight sets, the parts that need no DeepSpeed job: names, versions, files (the swap itself
runs on real ranks in tests/integration/test_learner_group.py)."""

import pytest
import torch

from apo_pipeline.engine.weight_sets import WeightSets


def test_sets_round_trip_through_files_per_rank(tmp_path):
    sets = WeightSets(torch.nn.Linear(2, 2))
    reference = {"weight": torch.arange(4.0).view(2, 2)}
    sets.put("reference", reference, version=0)
    sets.put("thetahat", {"bias": torch.ones(2)})
    sets.save(tmp_path, rank=1, world=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept_reference_rank1_of2.pt", "kept_thetahat_rank1_of2.pt"]
    other = WeightSets(torch.nn.Linear(2, 2))
    other.put("stale", {})
    other.load(tmp_path, rank=1, world=2)
    assert "stale" not in other and torch.equal(other.take("reference")["weight"], reference["weight"])
    assert other.kept_at == {"reference": -1, "thetahat": -1}  # loaded copies always swap
    other.load(tmp_path, rank=0, world=2)  # nothing saved for rank 0: none kept
    assert not other.sets


def test_no_swap_while_the_copy_equals_the_module_and_clear_errors():
    sets = WeightSets(torch.nn.Linear(2, 2))
    sets.put("reference", {}, version=sets.version)
    with sets.using("reference"), sets.using(None):  # equal to the module: no collective, no swap
        pass
    sets.changed()
    assert sets.kept_at["reference"] != sets.version
    with pytest.raises(KeyError, match="no kept weights named 'initial' \\(kept: reference\\)"):
        with sets.using("initial"):
            pass
    with pytest.raises(ValueError, match="weight set name"):
        sets.keep("Round-Start")
    sets.drop("reference")
    sets.drop("reference")
    assert "reference" not in sets
