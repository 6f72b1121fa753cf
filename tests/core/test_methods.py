import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pih import MixedPrecision, PihError, Prune, Quantize, RemoveBlocks, check_tensor, spec_from_dict


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_bad_ratio_names_argument(ratio):
    with pytest.raises(PihError, match=r"ratio=") as e:
        Prune(ratio)
    assert repr(ratio) in str(e.value)


@pytest.mark.parametrize("bits", [0, -3, 17, 32, 4.5, True])
def test_bad_bits_names_argument(bits):
    with pytest.raises(PihError, match=r"bits=") as e:
        Quantize(bits)
    assert repr(bits) in str(e.value)


def test_mixed_precision_bad_bits():
    with pytest.raises(PihError, match=r"bits\[1\]=0"):
        MixedPrecision((4, 0, 8))
    with pytest.raises(PihError, match=r"bits=\(\)"):
        MixedPrecision(())


def test_group_not_dividing_dimension():
    q = Quantize(4, group=128)
    q.check_shape((64, 256))
    with pytest.raises(PihError, match=r"group=128.*in_features=200"):
        q.check_shape((64, 200))


def test_nm_not_dividing_dimension():
    p = Prune(0.5, structure="2:4")
    p.check_shape((8, 16))
    with pytest.raises(PihError, match=r"structure='2:4'.*in_features=18"):
        p.check_shape((8, 18))


def test_nm_ratio_must_match():
    with pytest.raises(PihError, match=r"ratio=0.3"):
        Prune(0.3, structure="2:4")
    with pytest.raises(PihError, match=r"structure='4:2'"):
        Prune(0.5, structure="4:2")


@pytest.mark.parametrize(
    "kwargs, arg",
    [({"criterion": "random"}, "criterion"), ({"structure": "column"}, "structure")],
)
def test_bad_choices(kwargs, arg):
    with pytest.raises(PihError, match=arg):
        Prune(0.5, **kwargs)


@pytest.mark.parametrize("kwargs, arg", [({"group": 0}, "group"), ({"group": "row"}, "group"),
                                         ({"scale": "max"}, "scale"), ({"rotation": "fft"}, "rotation"),
                                         ({"update": "awq"}, "update"), ({"symmetric": 1}, "symmetric")])
def test_bad_quant_choices(kwargs, arg):
    with pytest.raises(PihError, match=arg):
        Quantize(4, **kwargs)


@pytest.mark.parametrize("arr", [np.array([1.0, np.nan]), np.array([[np.inf, 0.0]]), np.zeros((0, 3))])
def test_bad_tensors(arr):
    with pytest.raises(PihError, match=r"^W="):
        check_tensor("W", arr)


specs = st.one_of(
    st.builds(Prune, st.floats(0, 0.99), st.sampled_from(["magnitude", "wanda", "sparsegpt"])),
    st.builds(Quantize, st.integers(1, 16), st.sampled_from(["channel", "tensor", 32, 128]), st.booleans(),
              st.sampled_from(["absmax", "mse"]), st.sampled_from([None, "hadamard"]),
              st.sampled_from(["none", "gptq"])),
    st.builds(MixedPrecision, st.lists(st.integers(1, 16), min_size=1, max_size=5).map(tuple)),
    st.builds(RemoveBlocks, st.floats(0, 0.9)),
)


@given(specs)
def test_spec_roundtrip(spec):
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec.label


def test_spec_from_dict_unknown_key():
    with pytest.raises(PihError, match="unknown keys"):
        spec_from_dict({"kind": "prune", "ratio": 0.5, "sparsity": 0.5})


def test_specs_are_frozen():
    p = Prune(0.5)
    with pytest.raises(AttributeError):
        p.ratio = 0.2  # type: ignore[misc]
