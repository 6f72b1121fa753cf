"""What the commands print for a person: one clear line where a figure does not exist (a one-seed noise floor),
aligned tables with widths from their content, no Python reprs, no "None"; and --format json unchanged."""

import json
import re

import numpy as np
import pytest

from pih import Provenance, Prune, Quantize, Record, Store
from pih.cli import main

PYTHON_REPR = re.compile(r"\bNone\b|\{\}|\{'|\[\(|\bnan\b")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str, cmd: str) -> str:
    got = [s for s in err.splitlines() if s.strip()]
    assert len(got) == 1, f"expected one line, got:\n{err}"
    assert got[0].startswith(f"pih {cmd}: ") and "Traceback" not in err
    return got[0]


def tables(text: str) -> list[list[str]]:
    """Every table in ``text``: a header line, a line of dash runs, and the rows below it while they keep the
    gaps between the columns blank (a blank line, prose, or a misaligned row ends it: the tests count rows)."""
    lines = text.splitlines()
    found = []
    for i, ln in enumerate(lines):
        if i == 0 or not re.fullmatch(r"\s*-+(  -+)*", ln):
            continue
        spans = [m.span() for m in re.finditer(r"-+", ln)]
        gaps = [(a, b) for (_, a), (b, _) in zip(spans, spans[1:], strict=False)]

        def clear(row, gaps=gaps):
            return row.strip() != "" and all(row[a:b].strip() == "" for a, b in gaps)

        assert clear(lines[i - 1]), f"header not aligned:\n{lines[i - 1]}\n{ln}"
        rows = [lines[i - 1]]
        for row in lines[i + 1:]:
            if not clear(row):
                break
            rows.append(row)
        found.append(rows)
    return found


# -- pih compare -------------------------------------------------------------------------------------------------
RATIOS, BITS = (0.25, 0.5), (2, 4)


def _bridge_store(path, A):
    """Both orders of a 2 x 2 grid with A(Q->P) = A[(p, b)][seed] and the bridge's per-layer errors (the
    measured-layers predictor, no simulation needed)."""
    st = Store(path)
    for (p, b), per_seed in A.items():
        ps, qs = Prune(p, criterion="wanda"), Quantize(b, symmetric=False)
        for seed, a in enumerate(per_seed):
            prov = Provenance(backend="torch", model="synthetic", data="text:test", metric="neg_perplexity",
                              seqlen=16, calibration="text:train:random-windows", calibration_size=4, seed=seed)
            st.append(Record(prov, (ps, qs), -10.0, {"prune": p, "quant": b, "order": "P->Q"}))
            arrays = {"layer_err_pq": np.array([2.0, 1.0]), "layer_err_qp": np.array([2.0, 1.0 - a])}
            st.append(Record(prov, (qs, ps), -10.0 + a, {"prune": p, "quant": b, "order": "Q->P"}, {}, arrays))
    return st


def _compare(capsys, store, *extra):
    return run(capsys, "compare", store, "--assumptions", "measured-layers", "--no-progress", *extra)


def test_compare_with_one_seed_says_there_is_no_floor_and_claims_no_split(tmp_path, capsys):
    A = {(0.25, 2): [1.0], (0.5, 2): [-0.2], (0.25, 4): [-2.0], (0.5, 4): [0.5]}
    st = _bridge_store(tmp_path / "s", A)
    rc, out, err = _compare(capsys, st.path)
    assert rc == 0, err
    assert not PYTHON_REPR.search(out), out
    assert "one calibration seed: no noise floor, every point counts" in out
    assert "points above" not in out and "below (not scored)" not in out
    (tab,) = tables(out)
    header = re.split(r"\s{2,}", tab[0].strip())
    row = dict(zip(header, re.split(r"\s{2,}", tab[1].strip()), strict=True))
    assert row["predictor"] == "measured-layers" and row["points"] == "4"
    assert row["above"] == row["below"] == row["rho above"] == "-"  # no floor: no point is "above" one
    # the JSON keeps its meaning: no floor counts (null), every point counted as scored
    rc, doc, _ = _compare(capsys, st.path, "--format", "json")
    doc = json.loads(doc)
    nf = doc["noise_floor"]
    assert nf["n_above"] is None and nf["n_below"] is None and nf["pooled"] is None and nf["n_seeds"] == 1
    res = doc["results"][0]
    assert res["n_above_floor"] == 4 and res["n_below_floor"] == 0 and res["sign_agreement"] == 1.0


def test_compare_with_three_seeds_gives_the_floor_counts(tmp_path, capsys):
    A = {(0.25, 2): [1.0, 1.2, 0.8], (0.5, 2): [0.1, -0.3, 0.5], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.7, -0.6]}
    st = _bridge_store(tmp_path / "s", A)
    rc, out, err = _compare(capsys, st.path)
    assert rc == 0, err
    assert not PYTHON_REPR.search(out), out
    assert "no noise floor" not in out
    assert "3 points above their floor, 1 below" in out
    (tab,) = tables(out)
    header = re.split(r"\s{2,}", tab[0].strip())
    row = dict(zip(header, re.split(r"\s{2,}", tab[1].strip()), strict=True))
    assert (row["above"], row["below"]) == ("3", "1")
    doc = json.loads(_compare(capsys, st.path, "--format", "json")[1])
    assert (doc["noise_floor"]["n_above"], doc["noise_floor"]["n_below"]) == (3, 1)


# -- pih analyze, pih records: the store, found where pih report writes it -----------------------------------
def _prov(seed=0, model="gauss", metric="-rel_err"):
    return Provenance(backend="sim", model=model, data="synthetic", metric=metric, seed=seed, versions={})


def grid_store(path, seeds=(0,), ratios=(0.15, 0.2, 0.3), model="gauss"):
    """Each method alone and both orders of a ratios x (2, 3, 4, 8) grid; a ratio of 0.45 or more is stronger
    than every bit width (a censored CER)."""
    st = Store(path)
    for s in seeds:
        P = [Prune(r) for r in ratios]
        Q = [Quantize(b) for b in (2, 3, 4, 8)]
        for p in P:
            st.append(Record(_prov(s, model), (p,), -2 * p.ratio))
        for q in Q:
            st.append(Record(_prov(s, model), (q,), -1.6 / q.bits))
        for i, p in enumerate(P):
            for j, q in enumerate(Q):
                base = -2 * p.ratio - 1.6 / q.bits
                pt = {"ratio": p.ratio, "bits": q.bits, "settings": {"kind": "grid", "empty": {}}}
                st.append(Record(_prov(s, model), (p, q), base - 0.01 * (i - j), pt))
                st.append(Record(_prov(s, model), (q, p), base, pt))
    return st


def test_analyze_finds_the_store_inside_a_report_folder(tmp_path, capsys):
    grid_store(tmp_path / "run" / "store", seeds=(0, 1, 2))
    rc, direct, _ = run(capsys, "analyze", tmp_path / "run" / "store", "--boot", "20")
    assert rc == 0
    rc, out, err = run(capsys, "analyze", tmp_path / "run", "--boot", "20")
    assert rc == 0, err
    assert out == direct
    assert str(tmp_path / "run" / "store") in err and "using the store" in err  # says which it used
    rc, doc, _ = run(capsys, "analyze", tmp_path / "run", "--boot", "20", "--format", "json")
    doc = json.loads(doc)
    assert doc["store"] == str(tmp_path / "run" / "store") and len(doc["grids"]) == 1
    rc, listed, err = run(capsys, "records", tmp_path / "run")  # pih records reads the same layout
    assert rc == 0 and "using the store" in err and str(tmp_path / "run" / "store") in listed.splitlines()[0]
    # neither: one line, naming the stores one level down when there are any
    rc, _, err = run(capsys, "analyze", tmp_path)
    line = one_line(err, "analyze")
    assert rc == 2 and "no records.jsonl" in line and str(tmp_path / "run" / "store") in line
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "analyze", tmp_path / "empty")
    assert rc == 2 and "no records.jsonl" in one_line(err, "analyze")
    rc, _, err = run(capsys, "analyze", tmp_path / "nowhere")
    assert rc == 2 and "no such folder" in one_line(err, "analyze")


def test_analyze_rows_are_aligned_with_censored_cers(tmp_path, capsys):
    grid_store(tmp_path, ratios=(0.15, 0.2, 0.6))
    rc, out, err = run(capsys, "analyze", tmp_path, "--rows", "--boot", "20")
    assert rc == 0, err
    assert "cens:stronger" in out and "never extrapolated" in out
    assert not PYTHON_REPR.search(out), out
    tabs = tables(out)
    rows_table = [t for t in tabs if "A(Q->P)" in t[0] and "seed" in t[0]]
    assert rows_table and len(rows_table[0]) == 1 + 3 * 4  # header + every grid row


def test_records_table_is_aligned_and_readable(tmp_path, capsys):
    st = grid_store(tmp_path, ratios=(0.15, 0.5))
    st.append(Record(_prov(3, model="another-model-with-a-long-name", metric="accuracy"), (Prune(0.2),), 0.5))
    rc, out, err = run(capsys, "records", tmp_path, "--limit", "100")
    assert rc == 0, err
    assert not PYTHON_REPR.search(out), out
    (tab,) = tables(out)
    assert len(tab) == 1 + len(st.raw())
    header = re.split(r"\s{2,}", tab[0].strip())
    assert header == ["key", "model", "seed", "order", "metric", "value", "point"]
    assert "bits=2 ratio=0.15 settings.kind=grid" in out  # settings as key=value, an empty one as nothing
    assert "settings.empty" not in out
    last = tab[-1]
    assert last.rstrip().endswith("0.5")  # no point: nothing after the value
    # one model, one metric: said once above the table, not in a column
    only = Store(tmp_path / "one")
    only.append(Record(_prov(0), (Prune(0.2),), -0.4))
    rc, out, _ = run(capsys, "records", only.path)
    assert "all rows: model sim/gauss, metric -rel_err" in out
    (tab,) = tables(out)
    assert re.split(r"\s{2,}", tab[0].strip()) == ["key", "seed", "order", "value"]
    # the JSON is the stored lines, unchanged
    rc, doc, _ = run(capsys, "records", only.path, "--format", "json")
    doc = json.loads(doc)
    assert doc["records"][0]["point"] == {} and doc["n_records"] == 1


# -- pih cer --------------------------------------------------------------------------------------------------
def test_cer_table_is_aligned_and_says_why_a_value_is_missing(capsys):
    rc, out, _ = run(capsys, "cer", "--bits", "2", "3", "4", "8", "--perf", "-40", "-8", "-9", "-8.5",
                     "--value", "-8.7", "-1234567.5", "-1")
    assert rc == 0
    assert not PYTHON_REPR.search(out), out
    assert "not monotone" in out and "(4, 5.333)" in out
    (tab,) = tables(out)
    assert len(tab) == 4
    assert "ambiguous" in tab[1] and "censored: stronger" in tab[2] and "censored: weaker" in tab[3]
    rc, doc, _ = run(capsys, "cer", "--bits", "2", "3", "4", "8", "--perf", "-40", "-8", "-9", "-8.5",
                     "--value", "-1", "--format", "json")
    doc = json.loads(doc)
    assert doc["rows"][0]["value"] is None and doc["violations"] == [[4.0, 16 / 3]]


# -- pih run's table ------------------------------------------------------------------------------------------
def _run_output():
    """The shape main_run returns (pih.bridge.experiment), with a censored CER and a failed point."""
    prov = {"model": "tiny-llama-x@0123", "data": "kjv:test", "seqlen": 128, "settings": {"eval_tokens": 8192},
            "calibration": "kjv:train:random-windows", "calibration_size": 16, "seed": 0}
    pipe = "P[sparsegpt,unstructured,0.6] -> Q[3b,channel,asym,absmax,gptq]"
    points = [
        {"prune": None, "quant": None, "order": "dense", "pipeline": "dense", "ppl": 20.63, "sparsity": 0.0,
         "seed": 0},
        {"prune": 0.6, "quant": 3, "order": "P->Q", "pipeline": pipe, "ppl": 22.59290, "sparsity": 0.6268,
         "seed": 0},
        {"prune": 0.6, "quant": 3, "order": "Q->P", "pipeline": pipe, "ppl": 1234567.25, "sparsity": 0.6217,
         "seed": 0, "failed": "non-finite ppl: inf"},
    ]
    pairs = [
        {"prune": 0.6, "quant": 3, "seed": 0, "ppl_P_first": 22.59, "ppl_Q_first": 23.39, "A_QP": -0.7999,
         "cer_P": {"value": None, "censored": "stronger", "bound": 5.33}, "cer_minus_cq": None,
         "analysis": {"A_PQ_t1": 6099.71, "delta_PQ": 14322.9, "delta_QP": 15478.3}},
        {"prune": 0.3, "quant": 4, "seed": 0, "ppl_P_first": 20.83, "ppl_Q_first": 20.91, "A_QP": -0.07922,
         "cer_P": {"value": 4.09}, "cer_minus_cq": 0.09067, "analysis": {}},
    ]
    return {"experiment": "smoke", "provenance": prov, "seeds": [0], "metric": "ppl", "points": points,
            "pairs": pairs, "grids": [], "store": "/tmp/s"}


def test_run_table_is_aligned_and_explains_its_columns(capsys):
    from pih.commands.run import _table

    _table(_run_output())
    out = capsys.readouterr().out
    assert not PYTHON_REPR.search(out), out
    points, pairs = tables(out)
    assert len(points) == 4 and len(pairs) == 3
    assert "FAILED: non-finite ppl" in points[3]
    assert "cens:stronger" in pairs[1] and "never extrapolated" in out
    assert "A(Q->P) = M(Q first) - M(P first), M = -ppl" in out


# -- pih train ------------------------------------------------------------------------------------------------
def test_train_says_when_the_model_comes_from_the_cache(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    argv = ["train", "tiny-deit:digits:2", "--cache", tmp_path, "--threads", "1"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "trained now in" in out and "cached" not in out
    info = json.loads(next((tmp_path / "models").glob("tiny-deit-*/train_info.json")).read_text())
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "cached: not retrained" in out and "trained now" not in out
    assert f"in {info['seconds']:.0f} s" in out and "--force retrains" in out
    rc, doc, _ = run(capsys, *argv, "--format", "json")
    doc = json.loads(doc)
    assert doc["cached"] is True and doc["seconds"] == info["seconds"]
    rc, doc, _ = run(capsys, *argv, "--force", "--format", "json")
    assert json.loads(doc)["cached"] is False
