"""``pih compare``: does the simulation predict the order measured on real weights?

Reads the records a bridge run stored (both orders of a pruning x quantization grid, one protocol, one or more
calibration seeds), compresses the same model's actual layer tensors in the simulation under each assumption set
(:func:`sim.predict.predict_grid`), and compares the predicted A(Q->P) with the measured one: sign agreement over
the points above the noise floor (from the spread over seeds, :mod:`pih.compare`), Spearman rho, the points where
each assumption set fails, and a scatter plot.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from pathlib import Path

from ..cli import add_format, emit
from ..compare import ADVISE_LAYERS, FISHER_LAYERS, LOSS_LAYERS, MAP_LAYERS
from ..errors import PihError, PihWarning, bad

DEFAULT_MAX_TOKENS = 2048


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare the simulation's predicted A(Q->P) with the A measured on real weights",
        description="For a bridge store (pih run) holding both orders of a grid, predict A(Q->P) at every grid "
        "point by compressing the model's own layer tensors in the simulation under each assumption set, and "
        "report sign agreement above the noise floor (2 x std of A over calibration seeds), Spearman rho, and "
        "the failing points by class with what each predictor cannot see. Beside the simulation: the baselines "
        "(prune-first, majority-loo), PIH's rule, the bridge's own per-layer errors (measured-layers) and "
        "layer-wise predictors on the dense model before measuring (advise-layers, fisher-layers, loss-layers, "
        "alone-map-layers).")
    p.add_argument("stores", nargs="+", metavar="STORE", help="results store folder(s) of one protocol (with "
                   "--pool: of any protocols)")
    p.add_argument("--pool", action="store_true",
                   help="every protocol of every STORE as its own grid: each grid's report, then the figures "
                   "pooled over the grids (counts summed; the best chosen among the predictors scored on every grid)")
    p.add_argument("--assumptions", "--predictors", nargs="+", metavar="NAME", default=None,
                   help="predictors: simulation assumption sets, store predictors (prune-first, majority-loo, "
                   "pih, measured-layers) and layer-wise ones on the dense model (advise-layers, fisher-layers, "
                   "loss-layers, alone-map-layers); default: the default assumption sets and every other predictor")
    p.add_argument("--tensors", default=None,
                   help="exported layer tensors (.npz, pih.bridge.export format); default: exported from the "
                   "model and calibration of the records and cached in the first store")
    p.add_argument("--model", default=None, help="model source to export from when the provenance's model "
                   "name is not a tiny model (e.g. a folder); it must give the records' model name")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"calibration rows per layer for the simulation (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--seed", type=int, nargs="+", default=None,
                   help="simulation seeds: each one's calibration windows are exported and compressed (tie-breaks, "
                   "stochastic rounding keyed by it too) and the predicted A is the mean over them; default: every "
                   "seed of the records (with --tensors: the records' lowest seed)")
    p.add_argument("--no-simulation", action="store_true",
                   help="only the predictors that need no simulation (the store and layer-wise predictors): no "
                   "layer export, no JAX")
    p.add_argument("--protocol", default=None, metavar="ID",
                   help="the protocol to compare when the store holds several (one per model; pih records lists "
                   "them); a prefix is enough")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the scatter plot here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_format(p)
    from ..executors import add_executor_args

    add_executor_args(p)
    p.set_defaults(func=run)


def _records(stores: list[str]):
    from ..records import Store

    recs, arrays = [], {}
    for s in stores:
        st = Store.existing(s)
        for r in st.records():
            recs.append(r)
            arrays[r.key] = st
    return recs, (lambda r: arrays[r.key].load_arrays(r))


def _one_protocol(recs, chosen: str | None):
    """The records of one protocol: ``chosen`` (an id or a prefix of one), or the only one there is."""
    models = {}
    for r in recs:
        models.setdefault(r.protocol, r.provenance.model)
    if chosen is not None:
        hit = [p for p in models if p.startswith(chosen)]
        if len(hit) != 1:
            raise bad("--protocol", chosen, f"matches {len(hit)} of the store's protocols "
                      f"({', '.join(f'{p} ({m})' for p, m in models.items())})")
        return [r for r in recs if r.protocol == hit[0]]
    if len(models) > 1:
        raise bad("STORE", "records", f"hold {len(models)} different protocols: "
                  f"{', '.join(f'{p} ({m})' for p, m in models.items())}; choose one with --protocol")
    return recs


def _assumption_names(names: list[str] | None) -> list[str]:
    from sim.assumptions import ASSUMPTION_SETS, COMPARE_DEFAULTS

    _register_advise()
    from ..compare import PREDICTORS

    allowed = [*ASSUMPTION_SETS, *PREDICTORS]
    if names is None:  # an explicit list: a set registered later (a plugin, a test) is used only when named
        return [*COMPARE_DEFAULTS, *PREDICTORS]
    for n in names:
        if n not in allowed:
            raise bad("--assumptions", n, f"unknown assumption set; allowed: {allowed}")
    return list(dict.fromkeys(names))


def _model_source(model_name: str, override: str | None) -> tuple[str, int]:
    """(load_model source, model seed) for a provenance model name such as tiny-llama-kjv-s0-500@<fingerprint>."""
    if override:
        return override, 0
    m = re.fullmatch(r"tiny-([a-z]+)-(.+)-s(\d+)-(\d+)@[0-9a-f]+", model_name)
    if not m:
        raise bad("--model", None, f"the records' model {model_name!r} is not a tiny model: give --model SOURCE "
                  "or --tensors FILE")
    return f"tiny-{m.group(1)}:{m.group(2)}:{m.group(4)}", int(m.group(3))


def _exportable(grid):
    """Why the records' model cannot be loaded for the layer-wise work (a PihError to raise), or None."""
    prov = grid.provenance
    if prov.get("backend") != "torch" or prov.get("metric") != "neg_perplexity":
        return bad("records", prov.get("model"), "pih compare exports language models of the torch bridge only "
                   "(give --tensors for anything else)")
    if (prov.get("settings") or {}).get("rotate"):
        return bad("records", "rotate", "rotated models are not exported for the simulation; give --tensors")
    return None


def _dense_model(grid, model: str | None):
    """The records' dense model and their calibration text, tokenized: (model, corpus, tokens), each checked
    against the provenance (model name from its content, calibration text by its tag); for an image classifier
    (model, None, None): its calibration images are drawn per seed by :func:`_calibration`."""
    from pih.bridge.data import load_corpus, tokenize
    from pih.bridge.models import load_model

    prov = grid.provenance
    source, mseed = _model_source(prov["model"], model)
    lm = load_model(source, "cpu", "float32", seed=mseed)
    if lm.name != prov["model"]:
        raise bad("--model", source, f"gives model {lm.name!r}, the records were measured on {prov['model']!r}")
    if prov.get("metric") == "top1":
        return lm, None, None
    corpus = load_corpus(prov["calibration"].split("@", 1)[0].split(":", 1)[0])
    if not prov["calibration"].startswith(corpus.tag):
        raise bad("records", prov["calibration"], f"calibration text differs from this machine's {corpus.tag}")
    return lm, corpus, tokenize(lm.tokenizer, corpus.train)


def _calibration(grid, corpus, tokens, seed: int, lm=None):
    """The records' calibration windows of ``seed`` (an image classifier ``lm``: its calibration images)."""
    from pih.bridge.data import calibration_windows, image_data

    prov = grid.provenance
    if corpus is None:
        name = lambda tag: tag.split("@", 1)[0]  # noqa: E731
        st = prov.get("settings") or {}
        return image_data(lm, name(prov["data"]), name(prov["calibration"]), int(prov["calibration_size"]),
                          int(seed), st.get("eval_split"), st.get("calibration_split")).calib
    return calibration_windows(tokens, int(prov["seqlen"]), int(prov["calibration_size"]), int(seed),
                               source=f"train split of {corpus.name}")


def _grid_specs(grid) -> tuple[list, list]:
    """The grid's pruning specs by ratio and quantization specs by bit width."""
    return (sorted({p.prune_spec for p in grid.points}, key=lambda s: s.ratio),
            sorted({p.quant_spec for p in grid.points}, key=lambda s: s.bits))


def export_for(grid, seed: int, path: Path, max_tokens: int, model: str | None = None) -> Path:
    """Export the dense model's layer tensors with the records' calibration windows of ``seed``."""
    from pih.bridge.export import export_layers

    prov = grid.provenance
    problem = _exportable(grid)
    if problem is not None:
        raise problem
    lm, corpus, tokens = _dense_model(grid, model)
    calib = _calibration(grid, corpus, tokens, seed)
    meta = {"calibration": prov["calibration"], "calibration_size": prov["calibration_size"], "seed": int(seed),
            "seqlen": prov["seqlen"], "protocol": grid.protocol, "max_tokens": max_tokens}
    return export_layers(lm, calib, path, max_tokens=max_tokens, meta=meta)


def _cache_problem(path: Path, protocol: str, seed: int) -> str | None:
    """Why a cached export cannot be used (None: it is complete and belongs to these records)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad_member = z.testzip()  # reads every member and checks its CRC
            if bad_member is not None:
                return f"corrupt (member {bad_member} fails its CRC check)"
            if "meta.npy" not in z.namelist():
                return "incomplete (no meta entry)"
        import numpy as np

        with np.load(path, allow_pickle=False) as zz:
            meta = json.loads(str(zz["meta"]))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if meta.get("protocol") != protocol or int(meta.get("seed", -1)) != int(seed):
        return "from other records (protocol or seed differ)"
    return None


def _export_atomically(grid, seed: int, path: Path, max_tokens: int, model: str | None) -> Path:
    """Export to a temporary file, fsync it and rename it into place: a killed export leaves no torn cache."""
    import os

    for t in path.parent.glob(".compare_tensors_*.tmp.npz"):  # left by a killed export whose process is gone
        pid = t.name.rsplit(".", 3)[-3]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                t.unlink(missing_ok=True)
            except OSError:
                pass
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        export_for(grid, seed, tmp, max_tokens, model)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PihError(f"cannot write the layer tensor cache {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_tensors(path: Path, what: str):
    import zipfile

    from sim.tensors import load_tensors

    try:
        return load_tensors(path)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise bad(what, str(path), f"is not a readable tensor file ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if isinstance(exc, PihError):
            raise
        raise bad(what, str(path), f"is not a readable tensor file ({exc})") from None


def _options(grid) -> dict:
    """The simulation's options matching the bridge settings of the records (one name per setting)."""
    bridge = ((grid.provenance.get("settings") or {}).get("bridge") or {})
    return {k: bridge[k] for k in ("offgrid", "percdamp", "blocksize", "act_order") if k in bridge}


ADVISE_FRACTION = 0.25  # advise's default share of the linear layers


def advise_layers(grid, model=None, seeds=(0,), progress=False, **_):
    """``pih advise``'s layer-wise predictor at every grid point, before measuring: both orders applied to each
    sampled dense layer (a stratified quarter, as advise samples them) with the bridge's compressors, scored as
    advise scores them, by the relative output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), on the records' calibration windows
    of each seed; the predicted A(Q→P) is Σ err(P first) − Σ err(Q first) (> 0: quantizing first leaves less
    error), the mean over the seeds. (The other layer-wise predictors weigh the raw errors by their own model.)"""
    return _layerwise(grid, model, seeds, progress, "output")


def fisher_layers(grid, model=None, seeds=(0,), progress=False, **_):
    """The same orders scored by a sensitivity measured on the model instead of the output error: a layer's error
    is Σ F ⊙ ΔW², F the empirical diagonal Fisher of the next-token loss on the seed's calibration windows (one
    backward pass per window): the loss change of each order to second order, summed over the sampled layers."""
    return _layerwise(grid, model, seeds, progress, "fisher")


def loss_layers(grid, model=None, seeds=(0,), progress=False, **_):
    """The same orders with each layer's output error carried to the loss: Σ_o c_o (ΔW H ΔWᵀ)_oo, c_o the mean
    squared gradient of the loss at output channel o of the layer (:func:`pih.bridge.advise.output_grad_sq`), i.e.
    the second-order loss change under a Kronecker-factored Fisher. Unlike the diagonal Fisher it keeps the
    input correlations H (a weight-updating pruner's compensation), and unlike the output error it weighs each
    layer and channel by how much of its error reaches the loss through the later blocks."""
    return _layerwise(grid, model, seeds, progress, "loss")


def alone_map_layers(grid, model=None, seeds=(0,), progress=False, **_):
    """The output errors mapped to perplexity by a curve fitted on the each-alone records only (never on a pair,
    which is what is scored): per seed, log(ppl / ppl_dense) = a (e_P + α e_Q)^c with e_P, e_Q the summed layer
    errors of the pruning and of the quantization part (:func:`pih.compare.fit_alone_map`); in an order, the
    first method's part is its error alone and the second's what it adds. Predicted A(Q→P) = ppl(P first) −
    ppl(Q first), in perplexity: α, one unit of quantization error against one of pruning error, can reverse the
    raw comparison."""
    return _layerwise(grid, model, seeds, progress, "map")


# While a comparison runs, its grid's layer errors, shared by its layer-wise predictors (floats only); None
# otherwise, so a predictor called on its own measures afresh.
_SHARED: dict | None = None


@contextlib.contextmanager
def shared_layer_errors():
    """Within the block, the layer-wise predictors of one grid share one compression pass (:func:`_layer_errors`)."""
    global _SHARED
    _SHARED = {}
    try:
        yield
    finally:
        _SHARED = None


def _layer_errors(grid, model, seeds, progress) -> tuple[dict, dict]:
    """Per seed, the summed errors of every order and of every spec alone over the sampled layers, under each
    weighting the layer-wise predictors use ({seed: {kind: {order: error}}}; kinds "output" (advise's relative
    weights), "raw" (the output errors as they are), "fisher" and "channel" (language models only)), and the
    seconds of each part ({"common": model, calibration and compressed weights; "fisher": the Fisher's backward
    passes; "channel": the output gradients'}). One pass compresses each sampled layer once per order prefix for
    all four predictors; while :func:`compare` runs it is kept for the next predictor of the same grid, model,
    specs and seeds, so each predictor's cost is the common part plus its own sensitivity: what it costs alone."""
    import time

    import numpy as np

    from pih.advice import layer_weights
    from pih.bridge.advise import fisher_diag, measure_layerwise, output_grad_sq, sample_layers
    from pih.bridge.settings import BridgeSettings

    prov = grid.provenance
    P, Q = _grid_specs(grid)
    key = (grid.protocol, model, tuple(int(s) for s in seeds), tuple(s.label for s in (*P, *Q)))
    if _SHARED is not None and key in _SHARED:
        return _SHARED[key]
    t0 = time.time()
    lm, corpus, tokens = _dense_model(grid, model)
    image = corpus is None  # a classifier: no loss of the next token to weigh by
    bridge = ((prov.get("settings") or {}).get("bridge") or {})
    settings = BridgeSettings(**{k: v for k, v in bridge.items() if k in BridgeSettings.__dataclass_fields__})
    specs = [*P, *Q]
    orders = [o for i in range(len(P)) for j in range(len(Q)) for o in ((i, len(P) + j), (len(P) + j, i))]
    orders += [(k,) for k in range(len(specs))]  # each alone: prefixes of the pairs, so measured anyway
    layers = sample_layers(lm, ADVISE_FRACTION)
    seconds = {"common": 0.0, "fisher": 0.0, "channel": 0.0}
    out: dict = {}
    for seed in seeds:
        calib = _calibration(grid, corpus, tokens, seed, lm)
        sens = {}
        for kind, fn in (() if image else (("fisher", fisher_diag), ("channel", output_grad_sq))):
            ts = time.time()
            sens[kind] = fn(lm, calib, layers)
            seconds[kind] += time.time() - ts
        lw = measure_layerwise(lm, calib, specs, orders, (), settings, seed=int(seed), progress=progress,
                               layers=layers, sensitivities=sens)
        w = layer_weights(lw.ref, "relative")  # advise's own weights
        out[seed] = {"output": {o: float(np.sum(w * v)) for o, v in lw.errors.items()},
                     "raw": {o: float(np.sum(v)) for o, v in lw.errors.items()}}
        out[seed] |= {kind: {o: float(np.sum(v)) for o, v in d.items()} for kind, d in lw.weighted.items()}
    seconds["common"] = time.time() - t0 - seconds["fisher"] - seconds["channel"]
    if _SHARED is not None:
        _SHARED.clear()  # one grid's at a time
        _SHARED[key] = (out, seconds)
    return out, seconds


def _layerwise(grid, model, seeds, progress, kind: str):
    import numpy as np

    from ..compare import alone_values, fit_alone_map

    prov = grid.provenance
    image = prov.get("metric") == "top1" and kind == "output"  # a classifier: the output error needs no loss
    if (_exportable(grid) is not None and not image) or (prov.get("settings") or {}).get("rotate"):
        return {}, 0.0  # language models (any predictor) and classifiers (output errors), without rotation
    P, Q = _grid_specs(grid)
    fits = {}
    if kind == "map":  # only the seeds with each-alone records to fit on
        fits = {s: v for s in seeds if (v := alone_values(grid.records, s, P, Q))[0] is not None and (v[1] or v[2])}
        if not fits:
            return {}, 0.0
    errs, seconds = _layer_errors(grid, model, seeds, progress)  # every seed's, shared with the other predictors
    weighting = {"output": "output", "map": "raw", "fisher": "fisher", "loss": "channel"}[kind]
    per: dict[tuple, list[float]] = {}
    for seed in (fits if kind == "map" else seeds):
        e = errs[seed][weighting]
        if kind == "map":
            dense, pv, qv = fits[seed]
            ppl_of = fit_alone_map([(e[(i,)], pv[i]) for i in pv], [(e[(len(P) + j,)], qv[j]) for j in qv], dense)
        for i, p in enumerate(P):
            for j, q in enumerate(Q):
                pq, qp = (i, len(P) + j), (len(P) + j, i)
                if kind == "map":  # components: the first method's error alone, then what the second one adds
                    a = ppl_of(e[(i,)], e[pq] - e[(i,)]) - ppl_of(e[qp] - e[(len(P) + j,)], e[(len(P) + j,)])
                else:
                    a = e[pq] - e[qp]
                per.setdefault((float(p.ratio), int(q.bits)), []).append(a)
    cost = seconds["common"] + seconds.get(weighting, 0.0)
    return {k: float(np.mean(v)) for k, v in per.items()}, cost


class PredictSeed:
    """One seed's predictions (:func:`sim.predict.predict_grid` on its exported tensors): a task for an executor."""

    def __init__(self, P, Q, names, options, max_tokens) -> None:
        self.P, self.Q, self.names, self.options, self.max_tokens = P, Q, names, options, max_tokens

    def __call__(self, item) -> list[dict]:
        from sim.predict import predict_grid

        seed, layers = item
        return predict_grid(layers, list(self.P), list(self.Q), list(self.names), seed=seed, progress=False,
                            options=self.options, max_samples=self.max_tokens)


LAYERWISE = (
    (ADVISE_LAYERS, "pih advise's layer-wise orders on the dense layers (a quarter of them), before measuring",
     advise_layers, "sums each sampled layer's relative output error on dense inputs: it does not see errors "
     "compounding through the blocks, nor what a unit of error costs in perplexity"),
    (FISHER_LAYERS, "the same orders weighted by the loss's diagonal Fisher (second-order loss change), before "
     "measuring", fisher_layers, "weighs every weight on its own (diagonal Fisher): it misses the correlations "
     "between a row's inputs that a weight-updating method exploits"),
    (LOSS_LAYERS, "the same orders' output errors carried to the loss (per output channel by the squared loss "
     "gradient there), before measuring", loss_layers, "carries each layer's error to the loss from dense inputs "
     "and to second order: it does not see earlier layers' errors changing a layer's inputs"),
    (MAP_LAYERS, "the same orders' output errors mapped to perplexity by a curve fitted on the each-alone records "
     "only", alone_map_layers, "prices a unit of each method's error by the method alone: it assumes an error costs "
     "the same whether the method acts first or second"),
)


def _register_advise() -> None:
    from ..compare import PREDICTORS, register_predictor

    for name, what, fn, blind in LAYERWISE:
        if name not in PREDICTORS:
            register_predictor(name, what, fn, blind)


def _blind(name: str) -> str:
    """The sentence a predictor's failures are explained by: a store predictor's own, or a simulation set's."""
    from sim.assumptions import ASSUMPTION_SETS

    from ..compare import PREDICTORS

    if name in PREDICTORS:
        return PREDICTORS[name].blind
    a = ASSUMPTION_SETS.get(name)
    return (f"simulates the model's own layers under '{a.description}', each layer on its own" if a else "")


def compare(args, executor=None) -> dict:
    """The comparison; ``executor`` (:mod:`pih.executors`, None: this process): where each seed's predictions
    are computed (the exports stay in this process, which alone writes the tensor cache)."""
    from ..compare import MEASURED_LAYERS, PREDICTORS, measured_grid, score
    from ..executors import SerialExecutor

    _register_advise()
    if isinstance(executor, SerialExecutor):
        executor = None

    for s in args.stores:
        if not Path(s).is_dir():
            raise bad("STORE", s, "no such results store folder")
    names = _assumption_names(args.assumptions)
    if getattr(args, "no_simulation", False):
        names = [n for n in names if n in PREDICTORS]
        if not names:
            raise bad("--no-simulation", True, "leaves none of the named predictors")
    recs, arrays = _records(args.stores)
    recs = _one_protocol(recs, getattr(args, "protocol", None))
    grid = measured_grid(recs, arrays)
    sim_names = [n for n in names if n not in PREDICTORS]
    if args.seed is not None:
        sim_seeds = list(dict.fromkeys(args.seed))
    else:  # each calibration seed of the records, with its own export; one seed with given tensors
        sim_seeds = [min(grid.seeds)] if args.tensors else list(grid.seeds)
    results, predictions, tensor_files, timing = [], [], [], {}
    if sim_names:
        import time

        import numpy as np

        from sim.predict import predict_grid

        if args.max_tokens < 1:
            raise bad("--max-tokens", args.max_tokens, "must be positive")
        if args.tensors and not Path(args.tensors).is_file():
            raise bad("--tensors", args.tensors, "no such file")
        P, Q = _grid_specs(grid)
        timing = {"export_seconds": 0.0, "predict_seconds": 0.0}
        predict = PredictSeed(tuple(P), tuple(Q), tuple(sim_names), _options(grid), args.max_tokens)
        later = []  # (seed, tensor file) predicted on the executor's workers after the exports
        for seed in sim_seeds:
            if args.tensors:
                path = Path(args.tensors)
            else:
                path = Path(args.stores[0]) / f"compare_tensors_{grid.protocol}_s{seed}_{args.max_tokens}.npz"
                problem = _cache_problem(path, grid.protocol, seed) if path.is_file() else None
                if problem:
                    warnings.warn(f"the cached layer tensors {path} are {problem}: exported again", PihWarning,
                                  stacklevel=2)
                if problem or not path.is_file():
                    t0 = time.time()
                    _export_atomically(grid, seed, path, args.max_tokens, args.model)
                    timing["export_seconds"] += round(time.time() - t0, 1)
            tensor_files.append(str(path))
            if executor is not None:
                later.append((seed, path))
                continue
            t0 = time.time()
            rows = predict_grid(_read_tensors(path, "--tensors" if args.tensors else "tensor cache"), P, Q, sim_names,
                                seed=seed, progress=not args.no_progress, options=_options(grid),
                                max_samples=args.max_tokens)
            timing["predict_seconds"] += round(time.time() - t0, 1)
            predictions += [{**r, "seed": seed} for r in rows]
        if later:  # one task per seed; the tensors travel with it (workers need no access to this disk)
            t0 = time.time()
            items = [(seed, _read_tensors(path, "--tensors" if args.tensors else "tensor cache"))
                     for seed, path in later]
            got: dict[int, list[dict]] = {}
            for i, rows in executor.map(predict, items):
                if not isinstance(rows, list):  # a Lost item: nothing is stored here, so nothing to resume
                    raise PihError(f"pih compare: the prediction of seed {items[i][0]} was not computed "
                                   f"({rows.reason}); rerun the command")
                got[i] = rows
            timing["predict_seconds"] += round(time.time() - t0, 1)
            predictions += [{**r, "seed": later[i][0]} for i in range(len(later)) for r in got[i]]
        for n in sim_names:
            per: dict[tuple, list[float]] = {}
            for r in predictions:
                if r["assumption_set"] == n:
                    per.setdefault((r["prune"], r["quant"]), []).append(r["A_pred"])
            res = score(n, {k: float(np.mean(v)) for k, v in per.items()}, grid)
            for row in res["points"]:
                row["A_pred_seeds"] = per[(row["prune"], row["quant"])]
            res["n_prediction_sign_stable"] = sum(len({np.sign(x) for x in v}) == 1 for v in per.values())
            # the simulation's cost: exporting the layer tensors and predicting every set together
            res["cost_seconds"] = round(timing["export_seconds"] + timing["predict_seconds"], 1)
            results.append(res)
    measure = grid.measure_seconds
    with shared_layer_errors():  # this comparison's layer-wise predictors share one compression pass
        for n in names:
            if n not in PREDICTORS:
                continue
            try:
                pred, cost = PREDICTORS[n].predict(grid, model=args.model, seeds=sim_seeds,
                                                   progress=not args.no_progress)
            except PihError as exc:  # a predictor this store cannot feed: said, and the others still run
                if args.assumptions is not None:
                    raise
                warnings.warn(f"predictor {n} skipped: {exc}", PihWarning, stacklevel=2)
                continue
            if not pred:
                if args.assumptions is not None:
                    why = ("the records carry no per-layer errors (run with analysis = true)" if n == MEASURED_LAYERS
                           else "predicts none of the grid's points (each-alone records missing?)")
                    raise bad("--assumptions", n, why)
                continue
            res = score(n, pred, grid)
            res["cost_seconds"] = round(cost, 1)
            results.append(res)
    from ..compare import failure_classes

    for res in results:
        res["cost_ratio"] = round(res["cost_seconds"] / measure, 4) if measure > 0 else None
        res["failure_classes"] = failure_classes(res, _blind(res["assumption_set"]))
    ranked = sorted(results, key=lambda r: (-(r["sign_agreement"] if r["sign_agreement"] is not None else -1),
                                            -(r["spearman_rho"] if r["spearman_rho"] is not None else -2)))
    best = ranked[0] if ranked else None
    out = {
        "stores": [str(s) for s in args.stores], "protocol": grid.protocol, "provenance": grid.provenance,
        "seeds": grid.seeds, "simulation_seeds": sim_seeds if sim_names else None,
        "tensors": tensor_files,
        "max_tokens_per_layer": args.max_tokens if sim_names else None,
        "noise_floor": grid.noise_floor(), "incomplete": grid.incomplete,
        "timing": {**timing, "measure_seconds": round(measure, 1)},
        "n_failed": grid.n_failed, "failed": grid.failed,
        "best": {k: best[k] for k in ("assumption_set", "sign_agreement", "spearman_rho", "n_above_floor")}
        if best else None,
        "results": results, "predictions": predictions,
        "measured": [{"prune": p.prune, "quant": p.quant, "A_mean": p.mean, "A_seeds": [p.A[s] for s in p.seeds],
                      "noise": p.noise, "above_floor": p.above()} for p in grid.points],
    }
    if args.plot:
        out["plot"] = str(plot(results, args.plot, grid))
    return out


def plot(results: list[dict], path: str, grid) -> Path:
    """The scatter of predicted against measured A(Q->P), one panel per assumption set (pih.render_plots)."""
    from ..render_plots import draw

    panels = []
    for res in results:
        sa, rho = res["sign_agreement"], res["spearman_rho"]
        panels.append({"title": f"{res['assumption_set']}: sign {'-' if sa is None else f'{sa:.0%}'} "
                                f"(n={res['n_above_floor']}), rho {'-' if rho is None else f'{rho:+.2f}'}",
                       "points": [{"x": r["A_pred"], "y": r["A_measured"], "bits": r["quant"], "ratio": r["prune"],
                                   "above": r["above_floor"]} for r in res["points"]]})
    return draw({"kind": "compare", "bits": sorted({p.quant for p in grid.points}), "panels": panels,
                 "title": f"{grid.provenance.get('model')}: predicted vs measured A(Q->P), seeds {grid.seeds} "
                          "(marker size: pruning ratio; symlog axes)"}, path)


def compare_pooled(args, executor=None) -> dict:
    """``pih compare --pool``: :func:`compare` on every protocol of every store (one grid each), and the scores
    pooled over the grids (:func:`pih.compare.pool_scores`)."""
    import copy

    from ..compare import pool_scores

    if args.tensors:
        raise bad("--tensors", args.tensors, "is one model's layers; --pool compares several grids")
    if args.plot:
        raise bad("--plot", args.plot, "draws one grid; --pool compares several (plot each grid on its own)")
    grids = []
    for store in args.stores:
        if not Path(store).is_dir():
            raise bad("STORE", store, "no such results store folder")
        recs, _ = _records([store])
        protocols = sorted({r.protocol for r in recs if args.protocol is None or r.protocol.startswith(args.protocol)})
        if not protocols:
            raise bad("--protocol" if args.protocol else "STORE", args.protocol or store,
                      "matches no records" if args.protocol else "holds no records")
        for proto in protocols:
            sub = copy.copy(args)
            sub.stores, sub.protocol, sub.pool = [store], proto, False
            grids.append({"store": store, **compare(sub, executor)})
    pooled, best = pool_scores([(g["results"], g["timing"]["measure_seconds"]) for g in grids])
    return {"grids": grids, "pooled": pooled, "best": best,
            "pooling": "per predictor, counts summed over the grids it ran on; cost over measuring those grids; "
                       "worst per-grid rho; best among the predictors scored on every grid"}


def pooled_lines(out: dict) -> list[str]:
    """``pih compare --pool``'s result as text: each grid's report, then the pooled table."""
    from ..render import fmt, table

    L = []
    for g in out["grids"]:
        L += [f"== grid {g['store']} ({g['protocol']})", *text_lines(g), ""]
    rows = [[n, f"{p['grids']}/{len(out['grids'])}", f"{p['n_agree']}/{p['n_above_floor']}",
             fmt(p["sign_agreement_above_floor"], ".1%"), f"{p['qfirst_wins_right']}/{p['qfirst_wins_total']}",
             fmt(p["spearman_min_over_grids"], "+.3f"), fmt(p["cost_ratio"], ".3g")]
            for n, p in sorted(out["pooled"].items(), key=lambda kv: -(kv[1]["sign_agreement_above_floor"] or 0))]
    L.append(f"pooled over {len(out['grids'])} grids:")
    L += table(["predictor", "grids", "signs right", "sign agr.", "Q-first wins", "worst rho", "cost"], rows)
    L.append(f"best (among the predictors on every grid: signs, then wins, then worst rho): {out['best'] or '-'}")
    return L


def run(args) -> int:
    from ..executors import executor_from_args

    executor = executor_from_args(args)
    try:
        with executor:
            out = (compare_pooled if getattr(args, "pool", False) else compare)(args, executor)
    except ImportError as exc:  # pragma: no cover - jax or torch missing
        raise PihError(f"pih compare needs the simulation (jax) and, without --tensors, the bridge (torch): "
                       f"{exc}") from exc

    lines = pooled_lines if getattr(args, "pool", False) else text_lines
    emit(args, out, lambda: sys.stdout.write("\n".join(lines(out)) + "\n"))
    return 0


def text_lines(out: dict) -> list[str]:
    """``pih compare``'s result (its JSON dict) as lines of text. With one calibration seed there is no noise
    floor: every point counts, and the columns that split points by the floor show '-'."""
    from ..render import fmt, table

    prov = out["provenance"]
    nf = out["noise_floor"]
    has_floor = nf.get("n_seeds", len(out["seeds"])) > 1
    L = [f"{prov.get('model')}  data {prov.get('data')}  seeds {out['seeds']}  protocol {out['protocol']}"]
    if has_floor:
        L.append(f"noise floor: {nf['rule']}")
        L.append(f"  {nf['n_above']} points above their floor, {nf['n_below']} below (not scored); pooled floor "
                 f"{fmt(nf['pooled'], '.4g')} ({nf['pooled_rule']})")
    else:
        L.append("one calibration seed: no noise floor, every point counts; run >= 3 seeds for a floor")
    if out["n_failed"]:
        L.append(f"{out['n_failed']} failed record(s) excluded ({out['failed'][0]['reason']}; pih records lists them)")
    if out["incomplete"]:
        L.append(f"{len(out['incomplete'])} half pair(s) without the other order, not scored")
    if out["tensors"]:
        L.append(f"simulation on {', '.join(out['tensors'])} ({out['max_tokens_per_layer']} tokens per layer, "
                 f"seeds {out['simulation_seeds']}; predicted A = mean over them)")
    rows = []
    for r in out["results"]:
        split = [r["n_above_floor"], r["n_below_floor"], fmt(r["spearman_rho_above_floor"], "+.3f")] if has_floor \
            else ["-", "-", "-"]
        wins = f"{r['qfirst_wins_right']}/{r['qfirst_wins_total']}" if "qfirst_wins_total" in r else "-"
        rows.append([r["assumption_set"], r["n_points"], *split[:2], fmt(r["sign_agreement"], ".1%"),
                     fmt(r["spearman_rho"], "+.3f"), split[2], fmt(r["sign_agreement_all_points"], ".1%"),
                     fmt(r["majority_sign_baseline"], ".1%"), wins, fmt(r.get("cost_ratio"), ".3g")])
    L.append("")
    L += table(["predictor", "points", "above", "below", "sign agr.", "rho", "rho above", "sign (all)",
                "majority", "Q-first wins", "cost"], rows)
    L.append("(Q-first wins: measured quantize-first wins above the floor the predictor calls / all of them; cost: "
             "the predictor's seconds over what measuring both orders cost)")
    scope = " above the floor" if has_floor else ""
    for r in out["results"]:
        if r["failures"]:
            fails = ", ".join(f"p={x['prune']:g}/{x['quant']}b (pred {x['A_pred']:+.3g}, meas "
                              f"{x['A_measured']:+.3g})" for x in r["failures"])
            L.append(f"  {r['assumption_set']} has the wrong sign{scope} at: {fails}")
    classes = [c for r in out["results"] for c in r.get("failure_classes", [])]
    if classes:
        L.append("")
        L.append("why they fail (one sentence per predictor and failure class):")
        L += [f"  {c['sentence']}" for c in classes]
    if out["best"]:
        b = out["best"]
        L.append("")
        L.append(f"best: {b['assumption_set']}  (sign agr.: predicted sign right, over the points "
                 + ("above their floor" if has_floor else "of the grid") + "; majority: the score of always "
                 "predicting the more frequent measured sign on the same points)")
    if out.get("plot"):
        L.append(f"plot: {out['plot']}")
    return L
