"""Benchmark (not a test): 1 against 2 threads for the bridge's kinds of work, without and with a co-tenant process.

    python -m benchmarks.bench_threads [--repeats 5] [--tokens 4096] [--json FILE]

Three workloads on SmolLM2 shapes (576 wide, 1536 MLP), each timed with 1 thread and with 2 (torch intra-op threads
and BLAS pools set together by ``pih.threads.set_threads``), alternately (1, 2, 1, 2, ...), and printed as the
median of the per-pair ratios t(2 threads) / t(1 thread) (< 1: the second thread helps):

- ``forward``: one block's GEMMs over ``--tokens`` tokens (q, k, v, o, gate, up, down) and the Hessians of their
  four distinct inputs (what calibration forward passes and evaluation do);
- ``gptq``: GPTQ 4-bit on a 576x1536 down_proj (its column sweep pins itself to one thread; the Cholesky factors
  and the lazy-batch GEMMs follow the setting);
- ``analysis``: the numpy pair analysis (``pih.pair_decomposition``) of one 1536x576 layer, BLAS on 1 or 2 threads.

Each set runs twice: as the machine is (the load average is printed: other jobs count), and with one more busy
process started by this benchmark (a co-tenant spinning on one core). On the 2-core machine this is the choice
of the default ``threads``: see ``experiments/measured/bench_threads_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 3600:\n    pass\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="1 vs 2 threads, without and with a co-tenant (ratios)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from pih import pair_decomposition
    from pih.bridge.quant import gptq
    from pih.threads import set_threads

    g = torch.Generator().manual_seed(0)
    d, f = 576, 1536
    Ws = {"q": (d, d), "k": (192, d), "v": (192, d), "o": (d, d), "gate": (f, d), "up": (f, d), "down": (d, f)}
    Ws = {k: torch.randn(s, generator=g) * 0.05 for k, s in Ws.items()}
    x = torch.randn(args.tokens, d, generator=g)

    def forward():
        h = x @ Ws["q"].t() + (x @ Ws["o"].t())
        _ = x @ Ws["k"].t(), x @ Ws["v"].t()
        a = torch.nn.functional.silu(x @ Ws["gate"].t()) * (x @ Ws["up"].t())
        _ = a @ Ws["down"].t()
        for inp in (x, h, x, a):  # the Hessians of the four distinct inputs
            _ = inp.t() @ inp

    Wd = torch.randn(d, f, generator=g) * 0.05
    Xd = torch.randn(2048, f, generator=g) + torch.randn(2048, 1, generator=g)
    Hd = 2 * Xd.t() @ Xd / 2048

    def gptq_layer():
        gptq(Wd, Hd, 4)

    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((f, d))
    wq = np.round(w0 * 4) / 4
    m1, m2 = rng.random((f, d)) < 0.5, rng.random((f, d)) < 0.5
    lam = rng.random(f * d)

    def analysis():
        for _ in range(4):
            pair_decomposition(w0, wq, wq * ~m1, m1, wq * ~m2, m2, lam)

    work = {"forward": forward, "gptq": gptq_layer, "analysis": analysis}
    out = {"cores": os.cpu_count(), "tokens": args.tokens, "rows": []}
    print(f"{os.cpu_count()} cores; {args.repeats} pairs (1 thread, 2 threads) per row; ratio = t(2) / t(1), median")
    for cotenant in (False, True):
        spin = subprocess.Popen([sys.executable, "-c", SPIN]) if cotenant else None
        try:
            time.sleep(1.0 if cotenant else 0.0)
            print(f"{'with one busy co-tenant process' if cotenant else 'as the machine is'} "
                  f"(load average {os.getloadavg()[0]:.2f}):")
            for name, fn in work.items():
                set_threads(1)
                fn()  # warm-up
                t1, t2 = [], []
                for _ in range(args.repeats):
                    for n, acc in ((1, t1), (2, t2)):
                        set_threads(n)
                        t0 = time.perf_counter()
                        fn()
                        acc.append(time.perf_counter() - t0)
                ratios = [b / a for a, b in zip(t1, t2, strict=True)]
                row = {"work": name, "cotenant": cotenant, "t1_s": statistics.median(t1),
                       "t2_s": statistics.median(t2), "ratio_2_over_1": statistics.median(ratios),
                       "ratios": ratios, "load": os.getloadavg()[0]}
                out["rows"].append(row)
                print(f"  {name:<9} 1 thread {row['t1_s'] * 1e3:8.1f} ms   2 threads {row['t2_s'] * 1e3:8.1f} ms   "
                      f"t2/t1 x{row['ratio_2_over_1']:.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
        finally:
            if spin is not None:
                spin.kill()
                spin.wait()
    set_threads(1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
