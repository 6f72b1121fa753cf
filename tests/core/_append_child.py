"""Appends the same keys as its sibling processes, at the same moment (run by test_store_guarantees)."""

import json
import sys
import time

import numpy as np

from pih import PihError, Provenance, Prune, Record, Store

store_dir, n, start_at, exist_ok = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
batch = int(sys.argv[5]) if len(sys.argv) > 5 else 0  # > 0: Store.extend in batches of that many, exist_ok
prov = Provenance(backend="test", model="toy", data="none", metric="-err", seed=0, versions={})
recs = [Record(prov, (Prune(round(0.01 * i, 2)),), -float(i), {"i": i}, arrays={"e": np.full(3, float(i))})
        for i in range(n)]
store = Store(store_dir)
while time.time() < start_at:  # every process starts appending at once
    time.sleep(0.001)
written, refused = [], []
if batch:  # overlapping batches: each process starts at its own offset, so batches straddle others' keys
    off = int(sys.argv[6]) % n
    order = recs[off:] + recs[:off]
    for i in range(0, n, batch):
        store.extend(order[i:i + batch], exist_ok=True)
    print(json.dumps({"written": [], "refused": []}))
    sys.exit(0)
for r in recs:
    before = store.has(r.key)
    try:
        store.append(r, exist_ok=True) if exist_ok else store.append(r)
        if not before and not exist_ok:
            written.append(r.point["i"])
    except PihError as exc:
        assert "already stored" in str(exc), exc
        refused.append(r.point["i"])
print(json.dumps({"written": written, "refused": refused}))
