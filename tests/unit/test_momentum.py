"""APO extrapolation: exact formula, identity at alpha 0, bf16, chunking, bucketed pairs, errors."""

import pytest
import torch

from apo_pipeline.momentum import extrapolate_, extrapolate_pairs_, extrapolate_tensor_, snapshot

SHAPES = {"embed.weight": (13, 7), "layer.0.bias": (7,), "layer.0.weight": (7, 7, 3), "scalar": ()}


def states(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cur = {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}
    prev = {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}
    return cur, prev


def expected64(cur, prev, alpha):
    return {k: cur[k].double() + alpha * (cur[k].double() - prev[k].double()) for k in cur}


def test_exact_formula_fp32():
    cur, prev = states()
    want = expected64(cur, prev, 0.3)
    prev_before = {k: v.clone() for k, v in prev.items()}
    extrapolate_(cur, prev, 0.3)
    for k in SHAPES:
        torch.testing.assert_close(cur[k].double(), want[k], rtol=1e-6, atol=1e-6)
        assert cur[k].dtype == torch.float32
        assert torch.equal(prev[k], prev_before[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_zero_is_the_exact_identity(dtype):
    cur, prev = states(dtype)
    before = {k: v.clone() for k, v in cur.items()}
    extrapolate_(cur, prev, 0.0)
    assert all(torch.equal(cur[k], before[k]) for k in SHAPES)


def test_bf16_computes_in_fp32_and_rounds_once():
    cur, prev = states(torch.bfloat16, seed=1)
    want = {k: v.to(torch.bfloat16) for k, v in expected64(cur, prev, 0.3).items()}
    naive = {k: cur[k] + 0.3 * (cur[k] - prev[k]) for k in SHAPES}  # bf16 arithmetic, rounds 3 times
    extrapolate_(cur, prev, 0.3)
    for k in SHAPES:
        assert cur[k].dtype == torch.bfloat16
        torch.testing.assert_close(cur[k], want[k], rtol=0, atol=0)
    assert any(not torch.equal(naive[k], cur[k]) for k in SHAPES)


def test_chunking_matches_unchunked_bitwise():
    for dtype in (torch.float32, torch.bfloat16):
        a, prev = states(dtype, seed=2)
        b = {k: v.clone() for k, v in a.items()}
        extrapolate_(a, prev, 0.45)
        extrapolate_(b, prev, 0.45, chunk_numel=5)
        assert all(torch.equal(a[k], b[k]) for k in SHAPES)


def test_previous_in_another_dtype():
    cur, prev = states(torch.bfloat16, seed=3)
    prev32 = {k: v.float() for k, v in prev.items()}
    other = {k: v.clone() for k, v in cur.items()}
    extrapolate_(cur, prev, 0.3)
    extrapolate_(other, prev32, 0.3, chunk_numel=3)
    assert all(torch.equal(cur[k], other[k]) for k in SHAPES)


def test_bucketed_pairs_equal_the_dict_version():
    cur, prev = states(seed=4)
    whole = {k: v.clone() for k, v in cur.items()}
    extrapolate_(whole, prev, 0.3)
    names = list(SHAPES)
    done = extrapolate_pairs_(((n, cur[n]) for n in names[:2]), prev, 0.3)
    done += extrapolate_pairs_(((n, cur[n]) for n in names[2:]), prev, 0.3, chunk_numel=4)
    assert done == names
    assert all(torch.equal(cur[k], whole[k]) for k in SHAPES)


def test_snapshot_is_a_detached_copy():
    p = torch.nn.Parameter(torch.ones(3))
    snap = snapshot([("w", p)])
    with torch.no_grad():
        p.add_(1.0)
    assert torch.equal(snap["w"], torch.ones(3)) and not snap["w"].requires_grad


def test_parameters_in_place_under_autograd():
    model = torch.nn.Linear(4, 3)
    before = snapshot(model.named_parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    after = snapshot(model.named_parameters())
    extrapolate_(dict(model.named_parameters()), before, 0.5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), after[name] + 0.5 * (after[name] - before[name]))


def test_errors_name_the_key():
    cur, prev = states()
    with pytest.raises(ValueError, match="only in previous: \\['scalar'\\]"):
        extrapolate_({k: v for k, v in cur.items() if k != "scalar"}, prev, 0.3)
    with pytest.raises(ValueError, match="only in current: \\['extra'\\]"):
        extrapolate_({**cur, "extra": torch.zeros(1)}, prev, 0.3)
    bad = {**prev, "layer.0.bias": torch.zeros(8)}
    with pytest.raises(ValueError, match="'layer.0.bias' shape"):
        extrapolate_(cur, bad, 0.3)
    with pytest.raises(ValueError, match="'ghost' has no entry"):
        extrapolate_pairs_([("ghost", torch.zeros(1))], prev, 0.3)
    with pytest.raises(ValueError, match="not contiguous"):
        extrapolate_tensor_(torch.zeros(4, 3).t(), torch.zeros(3, 4), 0.3)
    with pytest.raises(ValueError, match="floating-point"):
        extrapolate_tensor_(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.3)
