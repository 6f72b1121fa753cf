"""The verification report: what each claim says, where it comes from, what was measured, and whether it held.

``pih report`` runs the checks this installation can run on the embedded defaults (the simulation presets that
decide the simulation rows, with the committed runs' sizes and seeds, and a real-weights smoke run of the torch
bridge on the project's tiny LLaMA), then writes ``OUT/README.md``: first the verdict table
(:mod:`pih.verdicts`, one row per result, computed from the committed full-size results of the clone, with this
run's own verdict beside every row it reproduces), then the definitions, then one section per result with its
plots and links to its proof and records. Rerunning resumes from the stores; a folder written in another mode
(``--quick`` or full) is never overwritten without ``--force``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import verdicts as V
from .errors import bad
from .stats import NOISE_RULE

REPO = Path(__file__).resolve().parents[1]
# (preset, assumption set): every simulation row of the verdict table; folders are named PRESET-SET like the
# committed ones in experiments/sim, and run with the same seeds (4) so a full report reproduces them.
SIM_RUNS = (("kuzmin", "A1"), ("harma", "A1"), ("disjoint", "A1"), ("disjoint", "A2"), ("disjoint", "A2-seen"),
            ("interference", "A1"), ("mixed-precision", "A1"))
SIM_SEEDS = 4
MARKER = ".pih-report.json"


def default_out(quick: bool) -> str:
    return "results/report-quick" if quick else "results/report"


def _check_mode(outdir: Path, mode: dict, force: bool) -> None:
    """Refuse to mix a quick and a full report (or different sections) in one folder unless ``force``."""
    marker = outdir / MARKER
    if marker.is_file() and not force:
        old = json.loads(marker.read_text())
        if old.get("mode") != mode["mode"]:
            raise bad("--out", str(outdir), f"holds a {old.get('mode')} report; this is a {mode['mode']} one "
                      f"(use another --out, or --force to replace it)")


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _sim_section(out: Path, quick: bool, progress: bool) -> tuple[list[str], dict]:
    from sim.presets import run_preset

    size = "quick sizes, 2 seeds" if quick else f"the committed sizes, {SIM_SEEDS} seeds"
    lines = ["## This run: simulation (JAX, generated tensors, float64)", "",
             f"Each preset below ran here ({size}); its own report gives the settings and every figure.", "",
             "| preset | assumption set | seconds | report |", "|---|---|---|---|"]
    payload = {}
    for preset, aset in SIM_RUNS:
        folder = f"{preset}-{aset}"
        t0 = time.time()
        payload[folder] = run_preset(preset, out / "sim" / folder, quick=quick, seeds=None if quick else SIM_SEEDS,
                                     assumptions=aset, progress=progress)
        lines.append(f"| `{preset}` | `{aset}` | {time.time() - t0:.0f} | [report.md](sim/{folder}/report.md) |")
    lines.append("")
    return lines, payload


def _bridge_section(out: Path, progress: bool) -> tuple[list[str], dict]:
    from .bridge.experiment import main_run

    config = REPO / "experiments" / "smoke.toml"
    if not config.exists():
        return ["## This run: real weights", "", f"skipped: {config} not found (run from a clone of the repository)",
                ""], {}
    t0 = time.time()
    folder = out / "bridge" / "smoke"
    summary = main_run(str(config), str(folder), progress=progress)
    prov = summary.get("provenance", {})
    lines = [f"## This run: real weights (torch bridge), `{summary.get('experiment')}` ({time.time() - t0:.0f} s)", "",
             f"Model {prov.get('model')}, data {prov.get('data')}, seqlen {prov.get('seqlen')}, calibration "
             f"{prov.get('calibration')} × {prov.get('calibration_size')}, seed {prov.get('seed')}. One calibration "
             "seed: a smoke check that the bridge runs end to end, not evidence for a claim (the real-weight rows "
             "above come from the committed 3-seed grids).", ""]
    for note in summary.get("notes", []) or []:
        lines.append(f"> {note}")
    points = summary.get("points", [])
    dense = [p["ppl"] for p in points if p.get("order") == "dense"]
    alone_p = {p["prune"]: p["ppl"] for p in points if p.get("order") == "P"}
    alone_q = {p["quant"]: p["ppl"] for p in points if p.get("order") == "Q"}
    if dense:
        lines += [f"Dense perplexity {dense[0]:.4g}; each method alone: "
                  + ", ".join([f"prune {k}: {v:.4g}" for k, v in sorted(alone_p.items())]
                              + [f"{k}-bit: {v:.4g}" for k, v in sorted(alone_q.items())]) + ".", ""]
    lines += ["| prune | bits | PPL (P first) | PPL (Q first) | A(Q→P) | C*_P − C_Q |", "|---|---|---|---|---|---|"]
    for r in summary.get("pairs", []):
        gap = r.get("cer_minus_cq")
        lines.append(f"| {r['prune']} | {r['quant']} | {r['ppl_P_first']:.4g} | {r['ppl_Q_first']:.4g} | "
                     f"{r['A_QP']:+.4g} | {'censored' if gap is None else f'{gap:+.3g}'} |")
    lines.append("")
    from .run_summary import draw_figures, summarize  # the figures pih run --plot draws

    for png in draw_figures(summarize(summary), folder):
        lines += [f"![{png.name}]({_rel(png, out)})", ""]
    return lines, summary


DEFINITIONS = """## Definitions

- **Order advantage** A(Q→P) = M(P∘Q(φ)) − M(Q∘P(φ)) = M(quantize first) − M(prune first), M higher is better
  (M = −perplexity for language models, accuracy for classifiers, −relative output error ‖(W−W′)X‖²/‖WX‖² for a
  simulated layer). **A > 0: quantizing first is better**; A < 0: pruning first is better. With perplexity,
  A = PPL(prune first) − PPL(quantize first).
- **CER** C*_P: the quantization compression ratio at which the quantizer alone performs as the pruner alone,
  by linear interpolation on the measured quantization curve (C_Q(b), M_Q(b)); **C_Q(b) = 16/b** (a 16-bit
  baseline; records carry the convention). The x axis of every A plot is **C*_P − C_Q**: > 0 when pruning is the
  stronger perturbation. PIH predicts A < 0 left of 0, A > 0 right of it, and A increasing in between. A CER
  outside the measured bit widths is *censored* (reported, never extrapolated); such points are left out of
  trends.
- **Noise floor** ({rule}). Real-weight claims use ≥ 3 calibration seeds; trends are pooled Spearman ρ with a
  95 % interval from a cluster bootstrap over fixed-p lines (simulation: over whole seeds).
- **Verdicts**: *holds* (every measured point agrees, or the interval is on the claim's side), *fails* (a
  counterexample is named), *not decidable at this size* (the interval contains 0, or the effects are inside the
  noise floor).
"""


def _sections(rows: list[V.Verdict], mine: dict[str, V.Verdict], link) -> list[str]:
    """One section per row; ``link`` turns a repository path into a link (this run's paths are relative to the
    report folder already)."""
    lines = ["## Results", ""]
    for v in rows:
        lines += [f'<a id="{v.key}"></a>', f"### {v.title}", "",
                  f"**Claim** ({v.source}): {v.claim}.", "",
                  f"**Measured**: {v.measured}.", "",
                  f"**Verdict: {v.verdict}**" + (f": {v.detail}." if v.detail else "."), ""]
        r = mine.get(v.key)
        if _reproduced(r):
            lines += [f"**This run**: {r.verdict}" + (f": {r.detail}." if r.detail else "."), ""]
        links = ([f"[proof]({link(v.proof)})"] if v.proof else []) + [f"[{p}]({link(p)})" for p in v.evidence]
        if links:
            lines += ["Evidence: " + ", ".join(links) + ".", ""]
        tab = v.figures.get("table")
        if tab:
            lines += ["| " + " | ".join(tab[0]) + " |", "|" + "---|" * len(tab[0])]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in tab[1:]] + [""]
        for p in v.plots:
            lines += [f"![{Path(p).stem}]({link(p)})", ""]
        if _reproduced(r):
            for p in r.plots:
                lines += [f"![{Path(p).stem}, this run]({p})", ""]
    return lines


def _reproduced(r: V.Verdict | None) -> bool:
    """A row this run recomputed from its own simulation (not a proof or a computation that needs no run)."""
    return r is not None and r.verdict != V.MISSING and any(p.startswith("sim/") for p in r.evidence)


def _this_run_cell(key: str, committed: V.Verdict, mine: dict[str, V.Verdict]) -> str:
    r = mine.get(key)
    if not _reproduced(r):
        return "—"
    if r.verdict != committed.verdict:
        return f"**{r.verdict}**"
    common = set(r.figures) & set(committed.figures)  # a row may add figures this run does not reproduce
    same = bool(common) and all(r.figures[k] == committed.figures[k] for k in common)
    return "same, same figures" if same else "same verdict, other figures"


def build_report(out: str | Path, quick: bool = False, sections: tuple[str, ...] = ("sim", "bridge"),
                 progress: bool = True, force: bool = False) -> int:
    """Run the sections, compute the verdicts, write ``out/README.md`` and ``out/summary.json``. Returns a process
    exit code (1 when a section failed; the others still run and the report says which)."""
    outdir = Path(out)
    mode = {"mode": "quick" if quick else "full"}
    _check_mode(outdir, mode, force)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / MARKER).write_text(json.dumps(mode) + "\n")
    payload: dict = {"mode": mode["mode"]}
    failed, run_lines = [], []
    builders = {"sim": lambda: _sim_section(outdir, quick, progress),
                "bridge": lambda: _bridge_section(outdir, progress)}
    for name in sections:
        print(f"pih report: section {name} ...", file=sys.stderr, flush=True)
        try:
            sec_lines, sec_payload = builders[name]()
        except ImportError as exc:
            sec_lines, sec_payload = [f"## {name}", "", f"unavailable: {exc}", ""], {"unavailable": str(exc)}
        except Exception as exc:  # a failing section is reported, and the others still run
            failed.append(name)
            sec_lines = [f"## {name}", "", "FAILED:", "", "```", traceback.format_exc(), "```", ""]
            sec_payload = {"error": repr(exc)}
        run_lines += sec_lines
        payload[name] = sec_payload

    have_repo = (REPO / "experiments").is_dir()
    rows = V.verdicts(V.committed(REPO)) if have_repo else []
    run_ev = V.Evidence(outdir / "sim", None, sim_label="sim")
    mine = {v.key: v for v in V.verdicts(run_ev)} if "sim" in sections else {}

    def link(p: str) -> str:
        return _rel(REPO / p, outdir)

    n = {k: sum(1 for v in rows if v.verdict == k) for k in (V.HOLDS, V.FAILS, V.UNDECIDED)}
    lines = ["# pih verification report", "",
             f"Generated by `pih report` ({mode['mode']} mode). **{len(rows)} results: {n[V.HOLDS]} hold, "
             f"{n[V.FAILS]} fail, {n[V.UNDECIDED]} not decidable at this size.** Each row is computed from the "
             "committed full-size results of this clone (`experiments/sim`, `experiments/measured`: real weights "
             "with ≥ 3 calibration seeds) by `pih.verdicts`; the column *this run* is the verdict recomputed from "
             "this run's own simulation (\"same, same figures\": this run reproduced the committed result). "
             "Definitions follow the table; every row links its section, proof and records.", ""]
    if not have_repo:
        lines += ["> Not run from a clone: the committed results are absent, so only this run's sections follow.", ""]
    else:
        table = V.table(rows, link, anchors=True, extra=("this run", lambda v: _this_run_cell(v.key, v, mine)))
        lines += ["## Verdicts", "", *table, ""]
    lines += [DEFINITIONS.format(rule=NOISE_RULE), ""]
    if rows:
        lines += _sections(rows, mine, link)
    lines += run_lines
    payload["verdicts"] = [v.to_dict() for v in rows]
    payload["this_run"] = [v.to_dict() for v in mine.values()]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")
    (outdir / "summary.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"pih report: wrote {outdir / 'README.md'}" + (f"; FAILED sections: {failed}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0
