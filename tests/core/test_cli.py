import json
import subprocess
import sys

import numpy as np

from pih import Provenance, Prune, Record, Store
from pih.cli import main


def test_pih_help_from_installed_entry_point():
    exe = [sys.executable, "-c", "import sys; from pih.cli import main; sys.exit(main())", "--help"]
    out = subprocess.run(exe, capture_output=True, text=True)
    assert out.returncode == 0 and "usage: pih" in out.stdout


def test_cer_json(capsys):
    rc = main(["cer", "--bits", "2", "3", "4", "8", "--perf", "-40", "-12", "-9", "-8.5", "--value", "-10", "-100",
               "--format", "json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["curve_monotone"] is True
    first, second = doc["rows"]
    assert np.isclose(first["value"], 4 + (16 / 3 - 4) * (1 / 3))
    assert second["censored"] == "stronger" and second["value"] is None


def test_cer_bad_input_is_a_clear_error(capsys):
    rc = main(["cer", "--bits", "4", "--perf", "1", "--value", "1"])
    assert rc == 2
    assert "bits=" in capsys.readouterr().err


def test_records_listing(tmp_path, capsys):
    prov = Provenance(backend="sim", model="m", data="d", metric="-err")
    Store(tmp_path).append(Record(prov, (Prune(0.5),), -0.25))
    assert main(["records", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_records"] == 1 and len(doc["protocols"]) == 1
    assert main(["records", str(tmp_path / "nope")]) == 2
