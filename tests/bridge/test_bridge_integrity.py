"""Loading integrity and security: missing or truncated weights, NaN/Inf tensors, model identity from the full
weight content (cached by path, size and mtime), and no code from a model folder ever runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from _tiny import add_auto_map, make_lm_folder

from pih import PihError, Store


def _cli(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "pih.cli", *args], capture_output=True, text=True,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, cwd=cwd)


def test_missing_and_truncated_weight_files(tmp_path):
    """main: transformers' tracebacks (or a silently random model when a tensor is missing)."""
    from safetensors.torch import load_file, save_file

    from pih.bridge.models import load_model

    folder = make_lm_folder(tmp_path / "m", "llama")
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(PihError, match="model.safetensors.*truncated"):
        load_model(str(folder))
    st.write_bytes(data[:5])
    with pytest.raises(PihError, match="truncated"):
        load_model(str(folder))
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(PihError, match="not a safetensors file"):
        load_model(str(folder))
    st.unlink()
    with pytest.raises(PihError, match="no weight files"):
        load_model(str(folder))
    st.write_bytes(data)
    sd = load_file(str(st))
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_file(sd, str(st), metadata={"format": "pt"})
    with pytest.raises(PihError, match=r"lack 1 tensor.*model.layers.1.mlp.down_proj.weight"):
        load_model(str(folder))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(PihError, match="model-00001-of-00002.safetensors.*missing"):
        load_model(str(folder))
    r = _cli("run", str(_config(tmp_path, folder)), "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(tmp_path, value):
    from safetensors.torch import load_file, save_file

    from pih.bridge.models import load_model

    folder = make_lm_folder(tmp_path / "m", "llama")
    sd = load_file(str(folder / "model.safetensors"))
    sd["model.layers.1.self_attn.v_proj.weight"][3, 5] = value
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PihError, match=r"tensor model.layers.1.self_attn.v_proj.weight \(16, 32\) holds (1 NaN|0 NaN "
                       r"and 1 Inf)"):
        load_model(str(folder))


def _config(tmp_path, folder, corpus="pydoc", name="t", **experiment):
    cfg = tmp_path / f"{name}.toml"
    ex = {"name": name, "model": str(folder), "threads": 1, **experiment}
    cfg.write_text("[experiment]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in ex.items()) +
                   f'[data]\neval = "{corpus}"\ncalibration = "{corpus}"\nseqlen = 32\neval_tokens = 256\n'
                   "calibration_size = 4\n[prune]\nratios = [0.5]\n[grid]\norders = [\"dense\", \"alone\"]\n")
    return cfg


def test_identity_is_the_full_content_and_stores_never_mix(tmp_path, corpus_name):
    """main: the fingerprint hashed the first MiB of each file: two same-named folders differing only in their last
    layer shared an identity, and a run into the same store reused the other model's numbers."""
    from safetensors.torch import load_file, save_file

    from pih.bridge.experiment import parse_config, run_experiment
    from pih.bridge.models import load_model

    a = make_lm_folder(tmp_path / "a" / "model", "llama", vocab_size=128, intermediate_size=8192)  # > 1 MiB file
    b = tmp_path / "b" / "model"
    b.mkdir(parents=True)
    for f in a.iterdir():
        (b / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(b / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"] *= 3.0  # the last layer only
    save_file(sd, str(b / "model.safetensors"), metadata={"format": "pt"})
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    na, nb = load_model(str(a)).name, load_model(str(b)).name
    assert na.split("@")[0] == nb.split("@")[0] == "llama:model" and na != nb
    store = tmp_path / "store"
    raw = {"experiment": {"name": "id", "model": str(a), "threads": 1},
           "data": {"eval": corpus_name, "calibration": corpus_name, "seqlen": 32, "eval_tokens": 256,
                    "calibration_size": 4}, "grid": {"orders": ["dense"]}}
    pa = run_experiment(parse_config(raw), store, progress=False)["points"][0]["ppl"]
    raw["experiment"]["model"] = str(b)
    pb = run_experiment(parse_config(raw), store, progress=False)["points"][0]["ppl"]
    assert pa != pb
    recs = Store(store).records()
    assert len(recs) == 2 and {r.provenance.model for r in recs} == {na, nb}


def test_identity_is_cached_by_path_size_and_mtime(tmp_path):
    from pih.bridge.models import file_digest, load_model

    folder = make_lm_folder(tmp_path / "m", "llama")
    st = folder / "model.safetensors"
    cache = str(tmp_path / "cache")
    d1 = file_digest(st, cache)
    table = json.loads((tmp_path / "cache" / "identity-cache.json").read_text())
    assert table[str(st.resolve())][2] == d1
    # same size and mtime: the cached digest is used (the file is not read again) ...
    stat = st.stat()
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0xFF
    st.write_bytes(bytes(raw))
    os.utime(st, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(st, cache) == d1
    # ... a new mtime rehashes
    os.utime(st, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert file_digest(st, cache) != d1
    n1 = load_model(str(folder), cache=cache).name
    assert load_model(str(folder), cache=cache).name == n1  # deterministic


@pytest.mark.parametrize("own_class", [False, True])
def test_no_code_from_a_model_folder_runs_even_when_answering_yes(tmp_path, corpus_name, own_class):
    """main: the tokenizer loader did not pass trust_remote_code=False; with "y" on standard input transformers ran
    the folder's own module (the marker was written) and its prompt corrupted the JSON output. With a built-in
    tokenizer class besides the auto_map, the model loads with it; without one, a one-line error."""
    folder = make_lm_folder(tmp_path / "m", "llama")
    marker = tmp_path / "MARKER"
    add_auto_map(folder, "tokenizer_config.json", "AutoTokenizer", marker)
    if not own_class:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "EvilTokenizer"
        (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    cfgj = json.loads((folder / "config.json").read_text())
    cfgj["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(cfgj))
    r = _cli("run", str(_config(tmp_path, folder, corpus_name)), "--out", str(tmp_path / "s"), "--no-progress",
             "--format", "json", stdin="y\ny\ny\ny\n")
    assert not marker.exists(), "code from the model folder ran"
    if own_class:
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)  # the whole of stdout is one JSON document
        assert out["points"] and out["provenance"]["model"].startswith("llama:m@")
    else:
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
        assert "never runs a model folder's code" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_transformers_loader_gets_trust_remote_code_false(tmp_path, monkeypatch):
    """The explicit flag reaches each loader the bridge calls (config, tokenizer, model; processor in the vision
    tests), so no interactive prompt can ever appear."""
    import transformers

    from pih.bridge.models import load_model

    seen = []
    for cls_name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        cls = getattr(transformers, cls_name)
        orig = cls.from_pretrained.__func__

        def spy(klass, *a, _orig=orig, _n=cls_name, **kw):
            seen.append((_n, kw.get("trust_remote_code", "absent")))
            return _orig(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    folder = make_lm_folder(tmp_path / "m", "llama")
    load_model(str(folder))
    assert {n for n, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(v is False for _, v in seen), seen
    assert torch.is_grad_enabled()
