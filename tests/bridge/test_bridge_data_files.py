"""Standard evaluation files: a local text file used whole, explicit splits, eval_tokens = "all", WikiText-2 from a
folder of its raw files (no datasets package), calibration from a text or JSON Lines file; the GPTQ/Wanda protocol
stated in every record."""

import json
import sys

import pytest
import torch
from _tiny import make_lm_folder

from pih import PihError, Store

WIKI_TRAIN = " = Valkyria = \n \n Senjo no Valkyria is a game .\n It was made in 2011 .\n \n"
WIKI_TEST = " = Robert Boulter = \n \n Robert Boulter is an actor .\n \n He appeared in 2000 .\n" * 40


def _wikitext_folder(tmp_path):
    folder = tmp_path / "wikitext-2-raw"
    folder.mkdir()
    (folder / "wiki.train.raw").write_text(WIKI_TRAIN * 40)
    (folder / "wiki.valid.raw").write_text(WIKI_TRAIN)
    (folder / "wiki.test.raw").write_text(WIKI_TEST)
    return folder


def test_wikitext2_from_a_folder_of_raw_files_without_datasets(tmp_path, monkeypatch):
    """main: `wikitext2` needs the datasets package and its hub cache."""
    from pih.bridge.data import load_corpus

    monkeypatch.setitem(sys.modules, "datasets", None)  # importing datasets would fail
    folder = _wikitext_folder(tmp_path)
    c = load_corpus(f"wikitext2:{folder}")
    # rows as the datasets loader gives them (line end kept, blank lines empty), joined with blank lines
    rows = [r if r.strip() else "" for r in WIKI_TEST.splitlines(keepends=True)]
    assert c.test == "\n\n".join(rows) and c.name == "wikitext2"
    assert c.test.startswith(" = Robert Boulter = \n\n\n\n\n Robert Boulter is an actor .\n\n\n\n\n He appeared")
    monkeypatch.setenv("PIH_WIKITEXT2", str(tmp_path))  # the parent folder of wikitext-2-raw/ works too
    assert load_corpus("wikitext2").sha256 == c.sha256
    monkeypatch.delenv("PIH_WIKITEXT2")
    with pytest.raises(PihError, match="wikitext2:FOLDER"):
        load_corpus("wikitext2")
    with pytest.raises(PihError, match="wiki.train.raw"):
        load_corpus(f"wikitext2:{tmp_path / 'nothing'}")


def test_file_corpus_used_whole_and_explicit_splits(tmp_path):
    """main: a local text file was always split 90/10, so a local test file could not be evaluated whole."""
    from pih.bridge.data import load_corpus, text_data

    f = tmp_path / "test.txt"
    text = "".join(f"line {i} of the evaluation text\n" for i in range(300))
    f.write_text(text)
    whole = load_corpus(f"file:{f}")
    assert whole.split("all") == text and whole.default_split("eval") == "all"
    with pytest.raises(PihError, match="used whole"):
        whole.split("test")
    split = load_corpus(str(f))  # no prefix: the 90/10 split, as before
    assert split.train + split.test == text and len(split.test) < len(text) / 5
    tok_folder = make_lm_folder(tmp_path / "m", "llama")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_folder), trust_remote_code=False)
    td = text_data(tok, f"file:{f}", f"file:{f}", 32, None, 4, 0)
    n = len(tok(text).input_ids) // 32
    assert td.eval_windows.shape == (n, 32) and td.data.endswith(":all")  # eval_tokens=None: every window
    assert td.settings["calibration_overlaps_eval"] and "GPTQ/Wanda" in td.settings["text_protocol"]
    td = text_data(tok, str(f), str(f), 32, None, 4, 0, eval_split="all", calibration_split="train")
    assert td.eval_windows.shape == (n, 32) and td.calibration.endswith(":train:random-windows")
    with pytest.raises(PihError, match="data.eval_split"):
        text_data(tok, str(f), str(f), 32, None, 4, 0, eval_split="validation")


def test_calibration_from_json_lines(tmp_path):
    from pih.bridge.data import load_corpus

    f = tmp_path / "calib.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document {i}", "id": i}) for i in range(5)) + "\n\n")
    c = load_corpus(f"file:{f}")
    assert c.all == "\n\n".join(f"document {i}" for i in range(5))
    f.write_text('{"text": 3}\n')
    with pytest.raises(PihError, match="line 1 has no string 'text'"):
        load_corpus(f"file:{f}")
    f.write_text("not json\n")
    with pytest.raises(PihError, match="line 1 is not JSON"):
        load_corpus(f"file:{f}")


def test_run_with_wikitext2_file_and_all_tokens_states_the_protocol(tmp_path):
    """`eval = "wikitext2:FOLDER"`, `eval_tokens = "all"`, calibration from a JSON Lines file, through pih run."""
    from pih.bridge.experiment import parse_config, run_experiment

    folder = _wikitext_folder(tmp_path)
    cal = tmp_path / "c.jsonl"
    cal.write_text("\n".join(json.dumps({"text": WIKI_TRAIN * 3}) for _ in range(10)))
    model = make_lm_folder(tmp_path / "m", "qwen2")
    raw = {"experiment": {"name": "w", "model": str(model), "threads": 1},
           "data": {"eval": f"wikitext2:{folder}", "calibration": f"file:{cal}", "seqlen": 64, "eval_tokens": "all",
                    "calibration_size": 4}, "grid": {"orders": ["dense"]}}
    out = run_experiment(parse_config(raw), tmp_path / "s", progress=False)
    rec = Store(tmp_path / "s").records()[0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model), trust_remote_code=False)
    from pih.bridge.data import load_corpus

    n_tokens = len(tok(load_corpus(f"wikitext2:{folder}").test).input_ids) // 64 * 64
    assert rec.extras["n_tokens"] == n_tokens == rec.provenance.settings["eval_tokens"]
    s = rec.provenance.settings
    assert s["eval_split"] == "test" and s["calibration_split"] == "all" and "GPTQ/Wanda" in s["text_protocol"]
    assert rec.provenance.data.startswith("wikitext2@") and rec.provenance.calibration.startswith("file:")
    assert out["points"][0]["ppl"] > 1 and torch.isfinite(torch.tensor(out["points"][0]["ppl"]))
