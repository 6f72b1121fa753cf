import numpy as np
import pytest
from hypothesis import find, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pih import (
    Granularity,
    MixedPrecision,
    PihError,
    Prune,
    Quantize,
    RemoveBlocks,
    direct_advantage,
    disjoint_selectivity,
    interference,
    owned_errors,
    owners_from_mask,
    theorem1,
)


@pytest.mark.parametrize(
    "prune, quant, expected",
    [
        (Prune(0.5), Quantize(4), False),  # unstructured inside a per-channel scale: interference
        (Prune(0.5, structure="row"), Quantize(4), True),  # row pruning, per-row scale
        (Prune(0.5, structure="row"), Quantize(4, group=64), True),
        (Prune(0.5, structure="row"), Quantize(4, group="tensor"), False),
        (RemoveBlocks(0.25), Quantize(4, group="tensor"), True),
        (RemoveBlocks(0.25), Quantize(3, update="gptq"), True),
        (Prune(0.5, structure="2:4"), Quantize(4, group=128), False),
        (Prune(0.5, structure="head"), Quantize(4), True),
        (Prune(0.5, criterion="sparsegpt"), Quantize(4), True),  # the OBS update spreads error over the row
        (Prune(0.5, criterion="sparsegpt"), Quantize(4, group="tensor"), False),
        (Prune(0.5, structure="row"), Quantize(4, group=32, rotation="hadamard"), True),
        (RemoveBlocks(0.1), MixedPrecision((8, 4)), True),
    ],
)
def test_disjoint_selectivity_table(prune, quant, expected):
    assert disjoint_selectivity(prune, quant) is expected


def test_granularity_runs():
    assert Granularity("nm", 4).within(Granularity("group", 128))
    assert not Granularity("group", 128).within(Granularity("nm", 4))
    assert not Granularity("nm", 3).within(Granularity("group", 128))
    assert Granularity("row").within(Granularity("block"))
    assert not Granularity("block").within(Granularity("row"))
    with pytest.raises(PihError, match="level='column'"):
        Granularity("column")


@st.composite
def owner_problem(draw, max_units=60):
    n_m = draw(st.integers(1, 4))
    n_u = draw(st.integers(1, max_units))
    floats = st.floats(0, 1e3, allow_nan=False, allow_infinity=False)
    e = draw(hnp.arrays(np.float64, (n_m, n_u), elements=floats))
    own = st.integers(-1, n_m - 1)
    a = draw(hnp.arrays(np.int64, n_u, elements=own))
    b = draw(hnp.arrays(np.int64, n_u, elements=own))
    lam = draw(hnp.arrays(np.float64, n_u, elements=st.floats(0, 10)))
    return e, a, b, lam


@given(owner_problem())
def test_t1_decomposition_equals_direct_difference(prob):
    """Checks proofs/t1_ownership.md: the sum over changed units equals the full difference."""
    e, a, b, lam = prob
    t1 = theorem1(e, a, b, lam)
    direct = direct_advantage(e, a, b, lam)
    scale = max(1.0, float(np.abs(lam[:, None] * e.T).sum()))
    assert abs(t1.advantage - direct) <= 1e-12 * scale
    assert t1.n_changed == int((a != b).sum())
    assert np.all(t1.terms[a == b] == 0)


@given(owner_problem())
def test_t1_no_owner_change_gives_zero(prob):
    """Checks proofs/t1_ownership.md (corollary): identical owner maps give A = 0 exactly."""
    e, a, _, lam = prob
    assert theorem1(e, a, a, lam).advantage == 0.0
    assert direct_advantage(e, a, a, lam) == 0.0


def _broken_t1(e, a, b, lam):
    """A plausible but wrong decomposition: forgets the sensitivities."""
    return theorem1(e, a, b).advantage


def test_t1_check_catches_a_broken_decomposition():
    """The identity test can fail: hypothesis finds a problem where a λ-free decomposition disagrees."""
    bad = find(owner_problem(max_units=6),
               lambda p: abs(_broken_t1(*p) - direct_advantage(*p)) > 1e-6)
    e, a, b, lam = bad
    assert (a != b).any()


def test_interference_zero_when_owners_explain_everything_and_additive_otherwise():
    rng = np.random.default_rng(0)
    e = rng.random((2, 50))
    pruned = rng.random(50) < 0.4
    own = owners_from_mask(pruned)
    total = owned_errors(e, own)
    assert interference(total, own, e) == 0.0
    extra = rng.random(50)
    assert interference(total + extra, own, e) == pytest.approx(extra.sum(), rel=1e-12)
    lam = rng.random(50)
    assert interference(total + extra, own, e, lam) == pytest.approx(lam @ extra, rel=1e-12)


def test_owner_input_errors():
    e = np.ones((2, 3))
    with pytest.raises(PihError, match="owners_a"):
        theorem1(e, [0, 1], [0, 1, 1])
    with pytest.raises(PihError, match="owners_b"):
        theorem1(e, [0, 1, 1], [0, 1, 2])
    with pytest.raises(PihError, match="sensitivities"):
        theorem1(e, [0, 1, 1], [0, 1, 1], [-1, 1, 1])
    with pytest.raises(PihError, match="errors"):
        theorem1(np.array([1.0, np.nan]), [0, 0], [0, 0])
