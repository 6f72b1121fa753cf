"""Experiments on real models from a TOML config: a grid of pruning ratios × bit widths, each method alone and both
orders (plus any explicit pipelines), stored as resumable :class:`pih.Record` s.

Config (every key is checked; unknown keys are an error)::

    [experiment]
    name = "smoke"
    model = "tiny-llama:kjv"      # smollm2 | tiny-llama[:corpus] | a local HF folder | org/name (HF cache) | .gguf
    tokenizer = "PATH"            # optional: a tokenizer folder for a model folder that ships none
    seed = 0                      # calibration windows and tie-breaks
    model_seed = 0                # the tiny models' training seed (default 0, whatever the calibration seed)
    seeds = [0, 1, 2]             # optional, instead of seed: one run per calibration seed, into one store
    model_seeds = [0, 1]          # optional, instead of model_seed: the tiny model trained with each seed
    device = "cpu"                # cpu | cuda | auto
    dtype = "float32"
    threads = 1                   # torch and BLAS threads (pih.threads; 0 = the libraries' defaults)
    analysis = true               # Theorem 1 / interference per (P, Q) pair
    unit_arrays = false           # also store the per-weight arrays (small models only)
    rotate = false                # Hadamard-rotate the residual stream of the dense model first (exact)

    [data]
    eval = "kjv"                  # kjv | pydoc | wikitext2[:FOLDER] | file:PATH (whole) | PATH (90/10); classifiers:
                                  # digits | fashion-mnist | an image folder (one subfolder per class) | an .npz
    calibration = "kjv"           # calibration windows (train split) / images
    seqlen = 128
    eval_tokens = 8192            # or "all": every full window of the evaluation split
    calibration_size = 16
    eval_split = "test"           # optional: train | test | all (default test; all for file:PATH and plain folders)
    calibration_split = "train"   # optional: train | test | all

    [settings]                    # pih.bridge.settings.BridgeSettings
    offgrid = "requantize"

    [prune]                       # pih.Prune fields, with ratios instead of ratio
    criterion = "wanda"
    ratios = [0.3, 0.5]

    [quantize]                    # pih.Quantize fields, with bits as a list
    bits = [3, 4]
    update = "gptq"

    [grid]
    orders = ["alone", "PQ", "QP"]    # which pipelines of the grid to run

    [[pipelines]]                 # explicit pipelines (e.g. multi-stage P->Q->P)
    name = "PQP"
    stages = [{kind = "prune", ratio = 0.25, criterion = "sparsegpt"}, {kind = "quantize", bits = 4}]
    settings = {}                 # BridgeSettings overrides for this pipeline (recorded in the point)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import Provenance, Prune, Quantize, Record, Store, Task, grid_role, run_sweep, spec_from_dict
from .. import validate as V
from ..errors import Interrupted, PihError, bad
from ..threads import DEFAULT as DEFAULT_THREADS
from ..threads import check_threads, numpy_analysis, set_threads
from ._common import offline_env, seed_all
from .settings import BridgeSettings

offline_env()

_SECTIONS = {
    "experiment": {"name", "model", "seed", "model_seed", "seeds", "model_seeds", "device", "dtype", "threads",
                   "analysis", "unit_arrays", "rotate", "cache", "description", "notes", "tokenizer"},
    "data": {"eval", "calibration", "seqlen", "eval_tokens", "calibration_size", "eval_split", "calibration_split"},
    "settings": {f.name for f in dataclasses.fields(BridgeSettings)},
    "prune": {"criterion", "structure", "ratios"},
    "quantize": {"bits", "group", "symmetric", "scale", "rotation", "update", "rounding"},
    "grid": {"orders"},
    "pipelines": {"name", "stages", "settings"},
}
ORDERS = ("dense", "alone", "PQ", "QP")


@dataclass
class ExperimentConfig:
    name: str
    model: str
    seed: int = 0
    model_seed: int | None = None
    seeds: tuple[int, ...] | None = None
    model_seeds: tuple[int, ...] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = DEFAULT_THREADS  # pih.threads: torch and BLAS together
    analysis: bool = True
    unit_arrays: bool = False
    rotate: bool = False
    cache: str | None = None
    tokenizer: str | None = None  # a tokenizer folder for model folders that ship none
    eval: str = "kjv"
    calibration: str = "kjv"
    seqlen: int = 128
    eval_tokens: int | None = 8192  # None ("all" in a config): every full window of the evaluation split
    calibration_size: int = 16
    eval_split: str | None = None  # train | test | all (default: test; all for file:PATH)
    calibration_split: str | None = None  # train | test | all (default: train; all for file:PATH)
    settings: dict[str, Any] = field(default_factory=dict)
    prune: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None
    orders: tuple[str, ...] = ("dense", "alone", "PQ", "QP")
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


def _typed(section: str, key: str, value: Any, kind: type | tuple) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise bad(f"{section}.{key}", value, f"must be {kind}")
    if not isinstance(value, kind):
        raise bad(f"{section}.{key}", value, f"must be of type {getattr(kind, '__name__', kind)}")
    return value


def _seed_list(key: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise bad(f"experiment.{key}", value, "must be a non-empty list of integer seeds")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"experiment.{key}", value, "seeds are non-negative integers")
    if len(set(value)) != len(value):
        raise bad(f"experiment.{key}", value, "a seed is listed twice")
    return tuple(value)


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Validate a config dict (as read from TOML); every unknown section or key is an error."""
    for sec, body in raw.items():
        if sec not in _SECTIONS:
            raise bad("config", sec, f"unknown section in {source}; allowed: {sorted(_SECTIONS)}")
        items = body if isinstance(body, list) else [body]
        for it in items:
            if not isinstance(it, dict):
                raise bad(sec, it, "must be a table")
            unknown = set(it) - _SECTIONS[sec]
            if unknown:
                raise bad(f"{sec}", sorted(unknown), f"unknown keys in {source}; allowed: {sorted(_SECTIONS[sec])}")
    ex = raw.get("experiment", {})
    if "model" not in ex or "name" not in ex:
        raise bad("experiment", ex, f"{source} needs [experiment] name and model")
    d = raw.get("data", {})
    if isinstance(d.get("eval_tokens"), str) and d["eval_tokens"] != "all":
        raise bad("data.eval_tokens", d["eval_tokens"], 'must be an integer or "all"')
    cfg = ExperimentConfig(
        name=_typed("experiment", "name", ex["name"], str),
        model=_typed("experiment", "model", ex["model"], str),
        seed=_typed("experiment", "seed", ex.get("seed", 0), int),
        model_seed=(None if ex.get("model_seed") is None
                    else _typed("experiment", "model_seed", ex["model_seed"], int)),
        seeds=_seed_list("seeds", ex.get("seeds")),
        model_seeds=_seed_list("model_seeds", ex.get("model_seeds")),
        device=_typed("experiment", "device", ex.get("device", "cpu"), str),
        dtype=_typed("experiment", "dtype", ex.get("dtype", "float32"), str),
        threads=check_threads(ex.get("threads", DEFAULT_THREADS), "experiment.threads"),
        analysis=_typed("experiment", "analysis", ex.get("analysis", True), bool),
        unit_arrays=_typed("experiment", "unit_arrays", ex.get("unit_arrays", False), bool),
        rotate=_typed("experiment", "rotate", ex.get("rotate", False), bool),
        cache=ex.get("cache"),
        tokenizer=None if ex.get("tokenizer") is None else _typed("experiment", "tokenizer", ex["tokenizer"], str),
        eval=_typed("data", "eval", d.get("eval", "kjv"), str),
        calibration=_typed("data", "calibration", d.get("calibration", "kjv"), str),
        seqlen=_typed("data", "seqlen", d.get("seqlen", 128), int),
        eval_tokens=None if d.get("eval_tokens") == "all" else _typed("data", "eval_tokens",
                                                                      d.get("eval_tokens", 8192), int),
        calibration_size=_typed("data", "calibration_size", d.get("calibration_size", 16), int),
        eval_split=None if d.get("eval_split") is None else _typed("data", "eval_split", d["eval_split"], str),
        calibration_split=(None if d.get("calibration_split") is None
                           else _typed("data", "calibration_split", d["calibration_split"], str)),
        settings=dict(raw.get("settings", {})),
        prune=dict(raw["prune"]) if "prune" in raw else None,
        quantize=dict(raw["quantize"]) if "quantize" in raw else None,
        orders=tuple(raw.get("grid", {}).get("orders", ORDERS)),
        pipelines=list(raw.get("pipelines", [])),
        source=source,
    )

    for one, many in (("seed", "seeds"), ("model_seed", "model_seeds")):
        if one in ex and many in ex:
            raise bad(f"experiment.{many}", ex[many], f"give either {one} or {many}, not both")
    BridgeSettings(**cfg.settings)  # validates
    for o in cfg.orders:
        if o not in ORDERS:
            raise bad("grid.orders", o, f"must be among {ORDERS}")
    # one validation of the whole run (pih.validate: the rules the simulation applies too), before any model
    V.check_folder_name("experiment.name", cfg.name)
    V.check_seed("experiment.seed", cfg.seed)
    if cfg.model_seed is not None:
        V.check_seed("experiment.model_seed", cfg.model_seed)
    V.check_threads("experiment.threads", cfg.threads)
    V.check_seqlen(cfg.seqlen, name="data.seqlen")
    if cfg.eval_tokens is not None:  # None: "all", every full window
        V.check_eval_tokens(cfg.eval_tokens, cfg.seqlen, "data.eval_tokens")
    V.check_int("data.calibration_size", cfg.calibration_size, 1)
    for p in cfg.pipelines:
        if "stages" not in p or not isinstance(p["stages"], list) or not p["stages"]:
            raise bad("pipelines.stages", p.get("stages"), "each [[pipelines]] needs a non-empty list of stages")
        for s in p["stages"]:
            spec_from_dict(dict(s))
        BridgeSettings(**{**cfg.settings, **p.get("settings", {})})
    prune_specs(cfg)
    quant_specs(cfg)
    for pl, _ in grid_tasks(cfg):
        V.check_pipeline(pl)
    return cfg


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    p = Path(path)
    if not p.is_file():
        raise bad("config", str(path), "no such file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise bad("config", str(path), f"not valid TOML: {exc}") from None
    return parse_config(raw, str(path))


def prune_specs(cfg: ExperimentConfig) -> list[Prune]:
    if not cfg.prune:
        return []
    p = dict(cfg.prune)
    ratios = p.pop("ratios", None)
    if not isinstance(ratios, list) or not ratios:
        raise bad("prune.ratios", ratios, "must be a non-empty list of ratios")
    return [Prune(r, **p) for r in ratios]


def quant_specs(cfg: ExperimentConfig) -> list[Quantize]:
    if not cfg.quantize:
        return []
    q = dict(cfg.quantize)
    bits = q.pop("bits", None)
    if not isinstance(bits, list) or not bits:
        raise bad("quantize.bits", bits, "must be a non-empty list of bit widths")
    return [Quantize(b, **q) for b in bits]


def grid_tasks(cfg: ExperimentConfig) -> list[tuple[tuple, dict]]:
    """(pipeline, point) pairs in an order that lets each stage prefix be computed once. A grid point's point is
    empty (its ratio, bits and order are its pipeline's); an explicit pipeline's holds its ``name`` and its
    ``settings`` overrides."""
    P, Q = prune_specs(cfg), quant_specs(cfg)
    out: list[tuple[tuple, dict]] = []
    if "dense" in cfg.orders:
        out.append(((), {}))
    if "alone" in cfg.orders:
        out += [((p,), {}) for p in P]
        out += [((q,), {}) for q in Q]
    for p in P:  # both orders of one pair next to each other: the pair analysis needs both models
        for q in Q:
            if "PQ" in cfg.orders:
                out.append(((p, q), {}))
            if "QP" in cfg.orders:
                out.append(((q, p), {}))
    for k, pl in enumerate(cfg.pipelines):
        specs = tuple(spec_from_dict(dict(s)) for s in pl["stages"])
        point = {"name": pl.get("name", f"pipeline{k}")}
        if pl.get("settings"):
            point["settings"] = dict(sorted(pl["settings"].items()))
        out.append((specs, point))
    return out


def point_row(r: Record) -> dict:
    """How a record appears in a run's summary: its grid coordinates and order (from its pipeline) or name."""
    p, b = r.coords
    return {"prune": p, "quant": b, "order": r.point.get("name") or r.role}


def model_max_positions(source: str, cache: str | None = None, seed: int = 0) -> int | None:
    """The longest sequence ``source`` accepts (``max_position_embeddings``), read from its ``config.json`` (or
    GGUF header, or the tiny LLaMA's known configuration) without loading any weight or training anything.
    None: no bound known (image models, or a source the loader will refuse with its own message)."""
    from ._common import cache_dir

    try:
        if source.startswith("tiny-llama"):
            from .train import TinyLlamaConfig, tiny_llama_folder

            parts = source.split(":")
            corpus = parts[1] if len(parts) > 1 and parts[1] else "kjv"
            steps = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
            try:
                return V.folder_max_positions(tiny_llama_folder(corpus, seed, cache, steps)) or \
                    TinyLlamaConfig().max_position_embeddings
            except PihError:  # not trained yet: the configuration it will be trained with
                return TinyLlamaConfig().max_position_embeddings
        if source.startswith(("tiny-deit", "tiny-resnet")):
            return None
        if source == "smollm2":
            folder = cache_dir(cache) / "models" / "smollm2-135m-instruct-q4_1"
            if (folder / "config.json").is_file():
                return V.folder_max_positions(folder)
            from .models import smollm2_gguf

            return _gguf_context_length(smollm2_gguf())
        path = Path(source).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return _gguf_context_length(path)
        if path.is_dir():
            return V.folder_max_positions(path)
    except (OSError, ValueError, KeyError, IndexError):  # unreadable: the loader says why
        return None
    return None


def _gguf_context_length(path: Path) -> int | None:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    arch = r.fields.get("general.architecture")
    name = bytes(arch.parts[-1]).decode() if arch is not None else "llama"
    f = r.fields.get(f"{name}.context_length")
    return int(f.parts[-1][0]) if f is not None else None


def validate_before_loading(cfg: ExperimentConfig, store_path: str | os.PathLike | None = None) -> None:
    """What needs the model's configuration or the output folder, checked before any model is loaded or
    trained (the rest is checked by :func:`parse_config`): seqlen within the model's positions, a writable
    output folder, and an existing store that reads cleanly."""
    if not cfg.model.startswith(("tiny-deit", "tiny-resnet")):
        mseed = 0 if cfg.model_seed is None else cfg.model_seed
        limit = model_max_positions(cfg.model, cfg.cache, mseed)
        V.check_seqlen(cfg.seqlen, limit, cfg.model, "data.seqlen")
    if store_path is not None:
        V.check_output_folder("store", store_path)
        if (Path(store_path) / "records.jsonl").is_file():
            Store(store_path).raw()  # a corrupt or conflicting store is refused now, not after the model load


class Runner:
    """Holds the model, the data and the cache of compressed stage prefixes for one experiment."""

    def __init__(self, cfg: ExperimentConfig, progress: bool = True):
        import torch  # noqa: F401 - loaded before the thread policy applies to it

        from .data import text_data
        from .engine import CompressionState
        from .models import load_model

        self.cfg, self.progress = cfg, progress
        self.adjustments: list[V.Adjustment] = []
        set_threads(cfg.threads, "experiment.threads")  # torch and BLAS together (pih.threads)
        seed_all(cfg.seed)
        mseed = 0 if cfg.model_seed is None else cfg.model_seed
        self.lm = load_model(cfg.model, cfg.device, cfg.dtype, cache=cfg.cache, seed=mseed, train_if_missing=True,
                             tokenizer=cfg.tokenizer)
        self._notes = list(self.lm.notes)
        self.settings = BridgeSettings(**cfg.settings)
        self.metric_key = "ppl" if self.lm.arch == "llama" else "accuracy"
        data_settings: dict[str, Any] = {}
        if self.lm.arch == "llama":
            td = text_data(self.lm.tokenizer, cfg.eval, cfg.calibration, cfg.seqlen, cfg.eval_tokens,
                           cfg.calibration_size, cfg.seed, cfg.eval_split, cfg.calibration_split, cache=cfg.cache)
            self.eval_windows, self.calib, data_settings = td.eval_windows, td.calib, td.settings
            data, calibration, metric, seqlen = td.data, td.calibration, "neg_perplexity", cfg.seqlen
            if isinstance(cfg.eval_tokens, int):  # printed now and stored in every record
                adj = V.window_adjustment(cfg.eval_tokens, td.eval_available, cfg.seqlen,
                                          f"evaluation split of {cfg.eval}", "data.eval_tokens")
                if adj is not None:
                    self.adjustments.append(adj.announce())
            n_eval = int(self.eval_windows.numel())
        else:
            from .data import image_data

            idata = image_data(self.lm, cfg.eval, cfg.calibration, cfg.calibration_size, cfg.seed, cfg.eval_split,
                               cfg.calibration_split, cache=cfg.cache)
            self.eval_x, self.eval_y, self.calib, data_settings = idata.eval_x, idata.eval_y, idata.calib, \
                idata.settings
            self.lm.calib_labels = idata.calib_labels
            data, calibration, metric, seqlen = idata.data, idata.calibration, "top1", None
            n_eval = int(self.eval_x.shape[0])
        self.provenance = Provenance(
            backend="torch", model=self.lm.name, data=data, metric=metric,
            seqlen=seqlen, calibration=calibration, calibration_size=cfg.calibration_size,
            seed=cfg.seed,
            settings={"bridge": self.settings.to_dict(), "eval_tokens" if seqlen else "eval_images": n_eval,
                      "dtype": cfg.dtype, "rotate": cfg.rotate, "ppl_protocol" if seqlen else "accuracy": (
                          "gptq-wanda" if seqlen else "top1"), **data_settings},
        )
        self._snaps: dict[tuple, tuple[dict, Any]] = {}
        self._base_key = ("rot",) if cfg.rotate else ()
        if cfg.rotate:
            from .rotate import rotate_model

            rotate_model(self.lm, seed=cfg.seed)
        self._snaps[self._base_key] = (self._state_dict(), CompressionState(rotated=cfg.rotate))
        self._rot_base: tuple[dict, Any] | None = None
        self._lam: dict | None = None
        self._finals: dict[tuple, tuple[dict, dict]] = {}  # memo of final weights (_remember)
        self.stages_computed: list[str] = []  # each compressed prefix this runner computed (not read from cache)
        self.stages_received: list[str] = []  # each one it took from another worker (prefix_source)
        self.prefix_source: Callable[[tuple], tuple | None] | None = None  # key -> snapshot another worker made

    @property
    def notes(self) -> list[str]:
        return list(self._notes)

    def release(self) -> None:
        """Free the model and the cached compressed prefixes (the next seed's runner loads its own)."""
        self._snaps.clear()
        self._finals.clear()
        self._rot_base = None
        self.lm = None

    # -- snapshots of compressed prefixes ---------------------------------------------------------------------
    def _state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.lm.model.state_dict().items()}

    def _restore(self, snap) -> Any:
        from .blocks import set_removed

        sd, state = snap
        self.lm.model.load_state_dict(sd)
        set_removed(self.lm, state.removed)
        return state.clone()

    def _base(self, pipeline) -> tuple:
        key = _base_key(self.cfg, pipeline)
        if key == ("rot",) and not self.cfg.rotate:
            if key not in self._snaps:
                from .engine import CompressionState
                from .rotate import rotate_model

                self._restore(self._snaps[()])
                rotate_model(self.lm, seed=self.cfg.seed)
                self._snaps[key] = (self._state_dict(), CompressionState(rotated=True))
            return key
        return self._base_key

    def compress(self, pipeline, settings) -> Any:
        """Leave ``self.lm`` compressed by ``pipeline``; reuse and extend the cache of stage prefixes."""
        from .engine import _check_pipeline, apply_stage

        self._base(pipeline)
        keys = prefix_keys(self.cfg, pipeline, settings)
        k0 = max(k for k in range(len(keys)) if keys[k] in self._snaps)
        if self.prefix_source is not None:  # a longer prefix another worker computed (pih.executors: shared)
            top = len(pipeline) if len(pipeline) == 1 else len(pipeline) - 1  # the prefixes a runner snapshots
            for k in range(top, k0, -1):
                got = self.prefix_source(keys[k])
                if got is not None:
                    self._snaps[keys[k]] = got
                    self.stages_received.append(_prefix_label(pipeline[:k], settings))
                    k0 = k
                    break
        state = self._restore(self._snaps[keys[k0]])
        _check_pipeline(self.lm, pipeline[k0:], settings, state)
        for k in range(k0, len(pipeline)):
            apply_stage(self.lm, pipeline[k], state, self.calib, settings, self.cfg.seed, k, self.progress)
            self.stages_computed.append(_prefix_label(pipeline[:k + 1], settings))
            if k + 1 < len(pipeline) or len(pipeline) == 1:
                self._snaps[keys[k + 1]] = (self._state_dict(), state.clone())
        return state

    def snapshot_weights(self, pipeline, settings) -> tuple[dict, dict]:
        """Effective weights and masks after ``pipeline`` (from the cache, computing it if needed)."""
        from .engine import effective_weights

        self._base(pipeline)
        key = prefix_keys(self.cfg, pipeline, settings)[-1]
        if key not in self._snaps:
            self.compress(pipeline, settings)
        state = self._restore(self._snaps[key])
        return effective_weights(self.lm, state), dict(state.masks)

    def sensitivities(self) -> dict:
        """λ per input column of each layer: mean squared dense calibration input (computed once)."""
        if self._lam is None:
            from .blocks import walk

            self._restore(self._snaps[self._base_key])
            lam = {}
            for step in walk(self.lm, self.calib, self.settings.batch_size, stats="norms", sequential=False):
                for n in step.layers:
                    lam[step.full(n)] = step.stats[n].norm2.cpu()
            self._lam = lam
        return self._lam

    # -- one grid point ---------------------------------------------------------------------------------------
    def compute(self, task: Task) -> Record:
        from .evaluate import perplexity

        t0 = time.time()
        settings = _task_settings(self.cfg, task)
        pipeline = tuple(task.pipeline)
        state = self.compress(pipeline, settings)
        t1 = time.time()
        if self.metric_key == "ppl":
            ev = perplexity(self.lm, self.eval_windows, settings.batch_size)
            value = -ev["ppl"]
        else:
            from .evaluate import accuracy

            ev = accuracy(self.lm, self.eval_x, self.eval_y)
            value = ev["accuracy"]
        sparsity = _sparsity(self.lm, state)
        extras: dict[str, Any] = {
            **ev,
            "stage_log": state.log, "sparsity": sparsity, "removed_blocks": list(state.removed),
            "notes": list(self.lm.notes), "device": str(self.lm.device), "compress_seconds": round(t1 - t0, 3),
            "eval_seconds": round(time.time() - t1, 3), "rotated": state.rotated,
        }
        arrays = None
        role = "named" if task.point.get("name") else grid_role(pipeline)
        if self.cfg.analysis and role in ("P->Q", "Q->P"):  # kept for the pair analysis (a memo, see _pair)
            self._remember(pipeline, settings, self._final_weights(state))
        if self.adjustments:
            extras["adjustments"] = [a.to_dict() for a in self.adjustments]
        failed = None
        if not math.isfinite(value):  # stored as it is, flagged, excluded from every analysis
            failed = f"non-finite {self.metric_key}: {ev.get(self.metric_key)} (nll {ev.get('nll')})" \
                if self.metric_key == "ppl" else f"non-finite {self.metric_key}: {value}"
        if self.cfg.analysis and role == "Q->P":
            summary, arrays = self._pair(pipeline, settings)
            extras["analysis"] = summary
        return Record(self.provenance, pipeline, value, dict(task.point), extras, arrays, failed=failed)

    def _remember(self, pipeline, settings, weights) -> None:
        """Memo of the final weights of the last few two-stage pipelines (the pair analysis of a Q→P task needs the
        P→Q model, usually computed just before). A memo of a pure function: a miss recomputes the same weights."""
        key = _labels(pipeline, settings)
        self._finals.pop(key, None)
        self._finals[key] = weights
        while len(self._finals) > 2:
            self._finals.pop(next(iter(self._finals)))

    def _weights_of(self, pipeline, settings):
        got = self._finals.get(_labels(pipeline, settings))
        return got if got is not None else self._fresh(pipeline, settings)

    def _pair(self, qp_pipeline, settings):
        """The pair analysis of Q→P and P→Q: a pure function of the pair (every model it needs comes from the memo
        or is recompressed, never from what the previous task left behind)."""
        from .analysis import pair_analysis

        q, p = qp_pipeline
        wqp, mqp = self._weights_of((q, p), settings)
        wpq, mpq = self._weights_of((p, q), settings)
        dense, _ = self.snapshot_weights((), settings)
        wq, _ = self.snapshot_weights((q,), settings)
        names = list(dense)
        full = {n: torch_zeros_like_bool(dense[n]) for n in names}
        mpq = {n: mpq.get(n, full[n]) for n in names}
        mqp = {n: mqp.get(n, full[n]) for n in names}
        lam = self.sensitivities()
        with numpy_analysis():
            return pair_analysis(dense, wq, wpq, wqp, mpq, mqp, lam, self.cfg.unit_arrays)

    def _final_weights(self, state):
        from .engine import effective_weights

        return effective_weights(self.lm, state), dict(state.masks)

    def _fresh(self, pipeline, settings):
        from .engine import effective_weights

        state = self.compress(pipeline, settings)
        return effective_weights(self.lm, state), dict(state.masks)


def _base_key(cfg: ExperimentConfig, pipeline) -> tuple:
    """The uncompressed model a pipeline starts from: rotated (a rotated run, or a quantizer with a rotation) or
    not."""
    rot = cfg.rotate or any(isinstance(s, Quantize) and s.rotation for s in pipeline)
    return ("rot",) if rot else ()


def prefix_keys(cfg: ExperimentConfig, pipeline, settings) -> list[tuple]:
    """The runner's cache keys of ``pipeline``'s stage prefixes, ``keys[k]`` for its first ``k`` stages (``keys[0]``:
    the uncompressed model it starts from). The same on every worker of one config: the snapshots they share."""
    base = _base_key(cfg, pipeline)
    skey = tuple(sorted(settings.to_dict().items()))
    return [base] + [base + (skey,) + tuple(_spec_key(s) for s in pipeline[:k]) for k in range(1, len(pipeline) + 1)]


def _task_settings(cfg: ExperimentConfig, task: Task) -> BridgeSettings:
    return BridgeSettings(**{**cfg.settings, **task.point.get("settings", {})})


def _prefix_label(prefix, settings) -> str:
    from .. import pipeline_label

    over = {k: v for k, v in settings.to_dict().items() if BridgeSettings().to_dict().get(k) != v}
    return pipeline_label(tuple(prefix)) + (f" {over}" if over else "")


def prefix_group(task: Task) -> tuple:
    """Which tasks a worker computes together: those sharing a compressed prefix. Every task of one pruning
    ratio (P alone, P→Q at every bit width, and Q→P, whose pair analysis needs that ratio's P→Q model) forms one
    group, so P's prefix is computed once and the pair analysis finds P→Q in the memo; Q alone and the dense
    model are groups of their own; an explicit pipeline goes with its first stage. Within a group the tasks keep
    their order (:func:`grid_tasks`). A worker's runner keeps every prefix it computed (the Q prefixes shared by
    several groups are computed at most once per worker)."""
    pipeline = tuple(task.pipeline)
    role = "named" if task.point.get("name") else grid_role(pipeline)
    settings = tuple(sorted((task.point.get("settings") or {}).items()))
    seed = task.provenance.seed
    if role in ("P->Q", "Q->P", "P"):
        prune = next(s for s in pipeline if s.kind == "prune")
        return (seed, "prune", _spec_key(prune), settings)
    if role == "Q":
        return (seed, "quantize", _spec_key(pipeline[0]), settings)
    if not pipeline:
        return (seed, "dense", settings)
    return (seed, pipeline[0].kind, _spec_key(pipeline[0]), settings)


_WORKER_RUNNERS: dict[str, Runner] = {}  # one runner per worker process (the last config it computed)


@dataclass
class BridgeWork:
    """``Runner.compute`` for a worker process: the worker loads the model and data once (its runner is kept for
    the next groups of the same config; a new config replaces it) and computes each task it gets. The records
    are those of the driver's own runner: the task's provenance must be the worker's (same model content, data,
    settings), else :class:`pih.executors.EnvironmentMismatch` (never stored as a failed point)."""

    cfg: ExperimentConfig

    def runner(self) -> Runner:
        import json

        key = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True, default=str)
        r = _WORKER_RUNNERS.get(key)
        if r is None:
            for old in _WORKER_RUNNERS.values():
                old.release()
            _WORKER_RUNNERS.clear()
            r = _WORKER_RUNNERS[key] = Runner(self.cfg, progress=False)
            r.loaded_here = True
        return r

    def __call__(self, task: Task) -> Record:
        from ..executors import EnvironmentMismatch

        r = self.runner()
        if r.provenance != task.provenance:
            import platform

            a, b = r.provenance.protocol_dict(), task.provenance.protocol_dict()
            diff = sorted(k for k in a if a[k] != b.get(k)) or ["seed"]
            raise EnvironmentMismatch(f"the worker on {platform.node()} measures another protocol than the run "
                                      f"({', '.join(diff)} differ: {diff[0]} {a.get(diff[0])!r} vs "
                                      f"{b.get(diff[0])!r}); give every node the same model and data files")
        return r.compute(task)

    def work_info(self) -> dict:
        """The prefixes this worker's runner computed since the last call, those it took from another worker, and
        whether it loaded the model."""
        r = self.runner()
        done, r.stages_computed = list(r.stages_computed), []
        got, r.stages_received = list(r.stages_received), []
        loaded, r.loaded_here = getattr(r, "loaded_here", False), False
        return {"stages_computed": done, "stages_received": got, "loaded_model": loaded}

    # -- prefixes shared between workers (pih.executors.RayExecutor) ----------------------------------------------
    def offers(self, tasks: list[Task]) -> list[tuple]:
        """The prefixes a group computes whole, which other groups may take: its one-stage pipelines (Q alone is
        the prefix of every Q→P point, of every pruning ratio's group)."""
        return [prefix_keys(self.cfg, t.pipeline, _task_settings(self.cfg, t))[1] for t in tasks
                if len(t.pipeline) == 1]

    def wants(self, tasks: list[Task]) -> list[tuple]:
        """The prefixes a group could take from another worker instead of computing them: every proper prefix of
        its pipelines."""
        out: list[tuple] = []
        for t in tasks:
            keys = prefix_keys(self.cfg, t.pipeline, _task_settings(self.cfg, t))
            out += [k for k in keys[1:len(t.pipeline)] if k not in out]
        return out

    def offer(self, keys: list[tuple]) -> dict[tuple, Any]:
        """This worker's snapshots of ``keys`` (those it holds), for other workers."""
        snaps = self.runner()._snaps
        return {k: snaps[k] for k in keys if k in snaps}

    def use_source(self, source: Callable[[tuple], Any] | None) -> None:
        """Where the runner looks for a prefix it does not hold before computing it (None: nowhere)."""
        self.runner().prefix_source = source


class WarmRunner(BridgeWork):
    """Load the worker's runner for ``cfg`` (a warm-up: :meth:`pih.executors.Executor.warm`)."""

    def __call__(self, _=None) -> int:
        self.runner()
        return os.getpid()


@dataclass
class RunnerFacts:
    """What the driver of a distributed run needs of a runner (the records' provenance, the metric, the load's
    notes and adjustments), taken from a worker's runner so that the driver loads no model."""

    provenance: Provenance
    metric_key: str
    notes: list
    adjustments: list

    def release(self) -> None:  # nothing held
        pass


@dataclass
class WorkerFacts(BridgeWork):
    """A worker's runner for ``cfg`` (loaded as a warm-up loads it, and kept for its groups), every pipeline of
    ``specs`` checked on its model: its :class:`RunnerFacts`, or the message of the first pipeline it cannot
    compress (N:M or group shapes, forbidden orders), before anything runs or is stored."""

    specs: tuple = ()

    def __call__(self, _=None) -> RunnerFacts | str:
        r = self.runner()
        try:
            check_pipelines(r.lm, self.cfg, self.specs)
        except PihError as exc:
            return str(exc)
        return RunnerFacts(r.provenance, r.metric_key, r.notes, list(r.adjustments))


def check_pipelines(lm, cfg: ExperimentConfig, specs) -> None:
    """Every (pipeline, point) of ``specs`` checked on the loaded model: shape errors (N:M, group size) and
    forbidden orders, before anything is stored."""
    from .engine import CompressionState, _check_pipeline

    for pl, pt in specs:
        _check_pipeline(lm, pl, BridgeSettings(**{**cfg.settings, **pt.get("settings", {})}), CompressionState())


def facts_from_a_worker(executor, cfg: ExperimentConfig, specs) -> RunnerFacts:
    """:class:`RunnerFacts` of ``cfg`` from one of ``executor``'s workers; its adjustments announced here, where the
    user sees them (a worker's warnings stay in its log); a pipeline the model cannot take, or a worker that
    cannot load the model, is one line."""
    from ..executors import Lost

    for _, got in executor.map(WorkerFacts(cfg, tuple(specs)), [None]):
        if isinstance(got, Lost):
            raise PihError(f"model {cfg.model!r}: a worker could not load it ({got.reason})")
        if isinstance(got, str):
            raise PihError(got)
        for a in got.adjustments:
            a.announce()
        return got
    raise PihError("the executor returned nothing for the run's facts")  # pragma: no cover - map yields each item


def _spec_key(spec) -> str:
    """Identity of a spec for the prefix cache: every field (labels omit some, e.g. MixedPrecision's update)."""
    import json

    return json.dumps(spec.to_dict(), sort_keys=True)


def _labels(pipeline, settings) -> tuple:
    return tuple(_spec_key(s) for s in pipeline) + (tuple(sorted(settings.to_dict().items())),)


def torch_zeros_like_bool(w):
    import torch

    return torch.zeros_like(w, dtype=torch.bool)


def _sparsity(lm, state) -> float:
    from .engine import effective_weights

    tot = nz = 0
    for w in effective_weights(lm, state).values():
        tot += w.numel()
        nz += int((w == 0).sum())
    return nz / tot


def expand_seeds(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per (model seed, calibration seed) the config asks for, model seeds outermost."""
    seeds = cfg.seeds or (cfg.seed,)
    mseeds = cfg.model_seeds or (cfg.model_seed,)
    return [dataclasses.replace(cfg, seed=s, model_seed=m, seeds=None, model_seeds=None)
            for m in mseeds for s in seeds]


def run_experiment(cfg: ExperimentConfig, store_path: str | os.PathLike, progress: bool = True,
                   save: str | os.PathLike | None = None, save_select: list[str] | None = None,
                   executor=None) -> dict:
    """Run (or resume) ``cfg`` into the store at ``store_path``, once per (model seed, calibration seed); return
    the JSON summary. ``save``: also write the compressed model of each grid point ``save_select`` names (default:
    every compressed point) under that folder (:func:`pih.bridge.save.save_points`; one subfolder per seed when
    the config has several).

    ``executor`` (:mod:`pih.executors`; None or serial: this process, as always): the points run on its workers,
    grouped by shared prefix (:func:`prefix_group`), each worker loading the model once (:class:`BridgeWork`).
    This process loads no model: the records' identity (the model's content, the data, the settings) comes from
    the first worker's runner, which checks every pipeline on its model before anything runs
    (:func:`facts_from_a_worker`); every other worker must measure the same protocol, else it refuses its tasks
    (:class:`pih.executors.EnvironmentMismatch`). This process is the only writer of the store. With ``save`` it
    loads the model itself (on the CPU) to write the compressed models. A point whose computation raises is stored
    as failed with its error, under either executor, and the other points go on."""
    from ..executors import Guarded, SerialExecutor

    distributed = executor is not None and not isinstance(executor, SerialExecutor)
    tasks_spec = grid_tasks(cfg)
    if not tasks_spec:
        raise bad("grid", cfg.orders, "the experiment has no grid points")
    runs = expand_seeds(cfg)
    for one in runs:  # every run's settings (seeds, the model's positions, the output folder) before any load
        validate_before_loading(one, store_path)
    if distributed:
        if cfg.device.startswith("cuda") and not getattr(executor, "gpus_per_task", 0):
            raise bad("--gpus-per-task", getattr(executor, "gpus_per_task", 0), f"device {cfg.device!r} on Ray "
                      "workers needs GPUs per task (e.g. --gpus-per-task 1; Ray hides the GPUs from tasks that "
                      "ask for none)")
        if hasattr(executor, "start"):
            executor.start()  # an unreachable cluster is one line now, before any model is loaded
        executor.warm(WarmRunner(runs[0]))  # the workers load the model now, before the first group reaches them

    store = None
    recs: list[Record] = []
    runners = []
    saved = []
    for k, one in enumerate(runs):
        if distributed and save is None:  # the records' identity and the pipelines' checks from a worker's runner
            runner = facts_from_a_worker(executor, one, tasks_spec)
        else:  # serial, or distributed with save (the driver's copy, on the CPU, writes the compressed models)
            runner = Runner(dataclasses.replace(one, device="cpu") if distributed else one, progress=progress)
            check_pipelines(runner.lm, one, tasks_spec)
        store = store or Store(store_path)
        tasks = [Task(runner.provenance, pl, pt) for pl, pt in tasks_spec]
        desc = f"pih run {cfg.name}" + (f" [{k + 1}/{len(runs)}: seed {one.seed}"
                                        + (f", model seed {one.model_seed}" if one.model_seed is not None else "")
                                        + "]" if len(runs) > 1 else "")
        if distributed:
            got = run_sweep(store, tasks, BridgeWork(one), progress=progress, desc=desc, group_by=prefix_group,
                            executor=executor)
        else:
            got = run_sweep(store, tasks, Guarded(runner.compute), progress=progress, desc=desc)
        recs += got
        if save is not None:
            from .save import save_points

            folder = Path(save).expanduser()
            if len(runs) > 1:
                folder = folder / (f"seed{one.seed}" + (f"-model{one.model_seed}" if cfg.model_seeds else ""))
            saved.append({"folder": str(folder), "seed": one.seed, "model_seed": one.model_seed,
                          "models": save_points(runner, tasks, got, folder, save_select, progress)})
        runners.append(runner)
        if len(runs) > 1 or (distributed and save is None):
            runner.release()
    with numpy_analysis():
        out = summarize(cfg, runners, recs, store)
    if save is not None:
        out["saved"] = saved[0] if len(saved) == 1 else {"folder": str(Path(save).expanduser()), "runs": saved}
    if distributed:
        out["executor"] = executor_summary(executor)
    return out


def executor_summary(executor) -> dict:
    """Where the points ran: the executor, its workers, and per compressed prefix how often any worker computed
    it (1: computed once for the whole grid; at most one per worker for the prefixes several groups share) and how
    often a worker took it from the one that computed it."""
    from collections import Counter

    stages = Counter(s for e in executor.log for s in e["info"].get("stages_computed", []))
    received = Counter(s for e in executor.log for s in e["info"].get("stages_received", []))
    return {**executor.describe(), "groups": len(executor.log),
            "worker_processes": len({(e["host"], e["pid"]) for e in executor.log}),
            "model_loads": sum(bool(e["info"].get("loaded_model")) for e in executor.log),
            "stages_computed": dict(sorted(stages.items())), "stages_received": dict(sorted(received.items()))}


def summarize(cfg: ExperimentConfig, runners, recs: list[Record], store: Store) -> dict:
    """The JSON summary of a run: every point, and per (P, Q) pair and seed A(Q→P), the CER of P and C_Q from the
    core's grid analysis (:func:`pih.analysis.analyze_grid`, the same function ``pih analyze`` uses on any store);
    per model, the grid over its calibration seeds (mean, spread and noise floor of A per point, line tests, the
    pooled ρ with a cluster bootstrap)."""
    from .. import order_advantage
    from ..analysis import analyze_grid

    runners = runners if isinstance(runners, list) else [runners]
    runner = runners[0]
    points = []
    for r in recs:
        row = {**point_row(r), "pipeline": r.order, runner.metric_key: r.extras.get(runner.metric_key),
               "sparsity": r.extras.get("sparsity"), "seed": r.provenance.seed, "model": r.provenance.model}
        if r.extras.get("removed_blocks"):
            row["removed_blocks"] = r.extras["removed_blocks"]
        if r.failed:
            row["failed"] = r.failed
        points.append(row)
    # the p x b grid proper (explicit [[pipelines]] and per-point settings are not part of it)
    grid = [r for r in recs if r.role in ("P", "Q", "P->Q", "Q->P") and "settings" not in r.point]
    by = {(r.protocol, r.provenance.seed, *r.coords, r.role): r for r in grid}
    protocols = list(dict.fromkeys(r.protocol for r in grid))
    analyses = {pr: analyze_grid([r for r in grid if r.protocol == pr]) for pr in protocols}
    analysis = analyses[protocols[0]] if protocols else None
    rows = {(pr, row.seed, row.prune.ratio, row.quant.bits): row for pr, a in analyses.items() for row in a.rows}
    k = runner.metric_key
    pairs = []
    for (pr, sd, p, b, o), qf in by.items():
        if o != "Q->P" or (pr, sd, p, b, "P->Q") not in by:
            continue
        pf = by[(pr, sd, p, b, "P->Q")]
        # A(Q->P) = M(P∘Q) − M(Q∘P): Q applied first minus P applied first; with M = −ppl: ppl(P first) − ppl(Q first)
        row = {"prune": p, "quant": b, "seed": sd, "model": qf.provenance.model, f"{k}_P_first": pf.extras[k],
               f"{k}_Q_first": qf.extras[k], "A_QP": order_advantage(qf.value, pf.value) if pf.ok and qf.ok else None}
        if not (pf.ok and qf.ok):  # no advantage from a failed measurement
            row["failed"] = "; ".join(f"{x.role}: {x.failed}" for x in (pf, qf) if x.failed)
        g = rows.get((pr, sd, p, b))
        if g is not None and g.cer_detail is not None:
            row["cer_P"] = g.cer_detail
            row["C_Q"] = g.c_quant
            if g.gap is not None:
                row["cer_minus_cq"] = g.gap
        if "analysis" in qf.extras:
            row["analysis"] = qf.extras["analysis"]
        pairs.append(row)
    out = {
        "experiment": cfg.name, "config": cfg.source, "store": str(store.path),
        "provenance": {k: v for k, v in runner.provenance.to_dict().items() if k != "versions"},
        "seeds": sorted({r.provenance.seed for r in recs}),
        "models": list(dict.fromkeys(r.provenance.model for r in recs)),
        "metric": runner.metric_key, "notes": runner.notes, "points": points, "pairs": pairs,
        "grids": [{"model": next(r.provenance.model for r in grid if r.protocol == pr),
                   "protocol": pr, "seed_summary": analyses[pr].seeds.to_dict() if analyses[pr].seeds else None,
                   "monotonicity": analyses[pr].stats.to_dict() if analyses[pr].stats else None}
                  for pr in protocols if analyses[pr].rows],
        "adjustments": [a.note for r in runners for a in r.adjustments],
        "n_failed": sum(not r.ok for r in recs), "failed": [p for p in points if "failed" in p],
    }
    if analysis is not None:
        curves = list(analysis.curves.values())
        if curves:
            c = curves[0]
            out["quant_curve"] = {"bits": c["bits"], "monotone": c["monotone"], "violations": c["violations"]}
        out["monotonicity"] = analysis.stats.to_dict() if analysis.stats else None
        out["n_censored"] = analysis.n_censored
    return out


def main_run(config: str, out: str | None, progress: bool = True, seeds: list[int] | None = None,
             model_seeds: list[int] | None = None, save: str | None = None,
             save_select: list[str] | None = None, executor=None) -> dict:
    cfg = load_config(config)
    if seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=_seed_list("seeds", list(seeds)))
    if model_seeds is not None:
        cfg = dataclasses.replace(cfg, model_seeds=_seed_list("model_seeds", list(model_seeds)))
    store = out or str(Path("results") / "runs" / cfg.name)  # the name is one path component (parse_config)
    try:
        return run_experiment(cfg, store, progress, save=save, save_select=save_select, executor=executor)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: every finished point is stored in {store}; run the same command again "
                          "to resume") from None
