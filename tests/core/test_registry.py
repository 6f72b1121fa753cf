"""The method registry: built-in methods, duplicate names refused, specs validated against it, command-line
spelling, plugins loaded from a file, and the registries restored by ``scoped``."""

import pytest

from pih import PihError, Prune, Quantize, registry
from pih.registry import Method


def test_builtin_methods_and_their_statistics():
    names = {(m.kind, m.name): m for m in registry.methods()}
    assert names[("prune", "wanda")].stats == "norms" and names[("prune", "sparsegpt")].stats == "hessian"
    assert names[("quantize", "gptq")].stats == "hessian" and names[("quantize", "none")].cli_name == "rtn"
    assert registry.method_of(Quantize(4, update="gptq")).name == "gptq"
    assert registry.method_of(Prune(0.5, "wanda")).name == "wanda"


def test_duplicate_names_are_refused_and_scoped_restores():
    with registry.scoped():
        registry.register_method(Method("mine", "prune", "none", ("unstructured",)))
        with pytest.raises(PihError, match="already registered"):
            registry.register_method(Method("mine", "prune"))
        assert Prune(0.5, criterion="mine").criterion == "mine"
        registry.register_kernel("mine", "sim", lambda *a: a)
        with pytest.raises(PihError, match="already registered"):
            registry.register_kernel("mine", "sim", lambda *a: a)
    with pytest.raises(PihError, match="criterion='mine'"):
        Prune(0.5, criterion="mine")  # gone after the scope


def test_unknown_method_and_missing_kernel_are_one_line_errors():
    with pytest.raises(PihError, match="registered prune methods"):
        Prune(0.5, criterion="random")
    with pytest.raises(PihError, match="update='awq'"):
        Quantize(4, update="awq")
    with registry.scoped():
        registry.register_method(Method("lonely", "prune"))
        with pytest.raises(PihError, match="has no kernel"):
            registry.kernel_for(Prune(0.5, criterion="lonely"), "torch")
    with pytest.raises(PihError, match="backend"):
        registry.register_kernel("wanda", "tpu", lambda *a: a)


def test_structures_a_method_does_not_support_are_refused():
    with pytest.raises(PihError, match="structured removal"):
        Prune(0.5, criterion="loss")  # unstructured


def test_command_line_spelling():
    assert registry.parse_method("wanda:2:4", "prune") == Prune(0.5, "wanda", "2:4")
    assert registry.parse_method("sparsegpt:0.6", "prune") == Prune(0.6, "sparsegpt")
    assert registry.parse_method("blocks:0.25", "prune") == Prune(0.25, "loss", "block")
    q = registry.parse_method("rtn:4:g128:sym:mse", "quantize")
    assert q == Quantize(4, group=128, symmetric=True, scale="mse")
    assert registry.parse_method("gptq:3", "quantize") == Quantize(3, symmetric=False, update="gptq")
    with pytest.raises(PihError, match="unknown quantize method 'awq'"):
        registry.parse_method("awq:4", "quantize")
    with pytest.raises(PihError, match="--prune='wanda:x'"):
        registry.parse_method("wanda:x", "prune")


def test_plugin_from_a_file(tmp_path):
    f = tmp_path / "my_pruner.py"
    f.write_text("from pih import registry\nfrom pih.methods import parse_ratio_or_nm\n"
                 "registry.register_method(registry.Method('random-drop', 'prune', 'none', ('unstructured',),"
                 " parse=parse_ratio_or_nm))\n")
    with registry.scoped():
        registry.load_plugin(str(f))
        registry.load_plugin(str(f))  # twice: a no-op, not a duplicate
        assert registry.parse_method("random-drop:0.3", "prune").criterion == "random-drop"
    with pytest.raises(PihError, match="plugin"):
        registry.load_plugin(str(tmp_path / "missing.py"))
