"""`pih compare` whose export writes half of its file and then hangs (killed there by test_faults_sim)."""

import io
import sys
import time

import numpy as np

import pih.commands.compare as cmp
from pih.cli import main


def slow_export(grid, seed, path, max_tokens, model=None):
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array("{}"), **{"W::x": np.ones((64, 64), np.float32)})
    data = buf.getvalue()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
    print("half written", flush=True)
    time.sleep(60)


cmp.export_for = slow_export
sys.exit(main(["compare", sys.argv[1], "--assumptions", "A1", "--seed", "0", "--no-progress"]))
