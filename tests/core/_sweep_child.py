"""A slow sweep run as a subprocess by test_records (killed mid-run, then resumed)."""

import os
import sys
import time

import numpy as np

from pih import Provenance, Prune, Quantize, Record, Store, Task, run_sweep

store_dir, log_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
prov = Provenance(backend="test", model="toy", data="none", metric="-err", seed=0, versions={})
tasks = [Task(prov, (Prune(0.1 * (i % 9)), Quantize(2 + i % 7)), {"i": i}) for i in range(n)]


def compute(task):
    with open(log_path, "a") as fh:  # which keys this process started computing
        fh.write(task.key + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    time.sleep(0.05)
    i = task.point["i"]
    arr = np.full((4, 4), float(i))
    return Record(task.provenance, task.pipeline, value=-float(i) ** 0.5, point=task.point, arrays={"e": arr})


run_sweep(Store(store_dir), tasks, compute, progress=False)
print("finished")
