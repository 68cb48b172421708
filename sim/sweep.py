"""Design-space sweep: accuracy, area and energy of every configuration of a grid.

A point is one configuration of the accelerator: rank, coarse group Gc, fine
group Gf, shift bits, SVD-MP policy (a fixed count of wide components or an
energy fraction) and the RMC array (rows x lanes). A grid gives a list of
values for each of these axes, and every combination is a point. The whole
grid is checked before any point runs, by building the configuration objects
of every point (:func:`validate_points`).

Each point gets three kinds of figures:

- Accuracy (:func:`evaluate_point`): every selected MiniLM layer is compiled
  with the point's configuration (smoothing, SVD split, SVD-MP, HGQ) on the
  default text and run in the golden model. The figure is its output SQNR
  against ``X W^T`` in float64, without bias, and the sweep reports the mean
  over the layers. With ``whole_model``, :func:`golden.model_accuracy.evaluate_model`
  adds the sentence-embedding cosine of the whole model.
- Energy and cycles (:func:`evaluate_point`): :func:`hw.perf.layer_energy`
  and :func:`hw.perf.predict_cycles` of the same layers on a core of the
  point's configuration, per token. The energies are estimates.
- Area (:func:`measure_area`): Yosys through :mod:`sim.area` on the core's
  Verilog. The area depends only on the hardware parameters
  (:func:`hardware_parameters`), so points that differ in numerics alone
  share one synthesis, and :mod:`sim.area` caches it per Verilog text.

Results are appended to JSON-lines files in the output folder as they
arrive: ``results.jsonl`` keyed by :func:`point_id` and ``area.jsonl`` keyed
by :func:`hardware_id`. A later sweep with the same folder reuses every
finished point and area whose id matches, whatever grid it belongs to.
"""

import contextlib
import csv
import datetime
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_LAYERS", "RECORD_FORMAT", "AXES", "SweepPoint", "SweepSettings", "make_settings", "SweepGrid",
    "GridError", "load_grid_file", "parse_axis", "point_id", "hardware_parameters", "hardware_id", "core_config",
    "PointConfigs", "layer_shapes", "point_configs", "validate_points", "default_captures", "evaluate_point",
    "measure_area", "area_figures", "ResultStore", "open_executor", "SweepOutcome", "run_sweep", "pareto_front",
    "write_outputs",
]

# One layer of each MiniLM shape (K x N: 384 x 384, 384 x 1536, 1536 x 384),
# spread over the depth of the model. layer0.ffn_in has the heaviest
# activation outliers. A point on these layers takes a few seconds.
DEFAULT_LAYERS = ("layer0.ffn_in", "layer2.query", "layer4.attn_out", "layer5.ffn_out")

# Version of the records' meaning. It enters every id, so records of another
# version are never reused.
RECORD_FORMAT = 1

POINTS_FILE = "results.jsonl"
AREA_FILE = "area.jsonl"

# Axes of a grid and the type of their values, in the order of iteration.
AXES = {
    "rank": int,
    "coarse_group": int,
    "fine_group": int,
    "shift_bits": int,
    "wide_count": int,
    "energy_fraction": float,
    "rows": int,
    "lanes": int,
}

# Settings shared by all points that a grid file may set besides the axes.
GRID_FILE_SETTINGS = ("layers", "alpha", "narrow_bits", "slice_bits", "lvc_lanes")


class GridError(ValueError):
    """An invalid grid, grid file, setting or point, raised before any point runs."""


# Points, settings and grids


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of the grid.

    Exactly one of ``wide_count`` and ``energy_fraction`` is set. They are
    the two SVD-MP policies of :class:`golden.lowrank.SVDMPConfig`.
    """

    rank: int = 32
    coarse_group: int = 128
    fine_group: int = 16
    shift_bits: int = 2
    wide_count: int | None = 8
    energy_fraction: float | None = None
    rows: int = 8
    lanes: int = 16

    def describe(self):
        """Return the parameters as ``name=value`` pairs, for messages."""
        return " ".join(f"{name}={value}" for name, value in asdict(self).items() if value is not None)

    def label(self):
        """Return a short label for plots, such as ``r32 gc128 gf16 sb2 w8 8x16``."""
        policy = f"w{self.wide_count}" if self.wide_count is not None else f"e{self.energy_fraction:g}"
        return (f"r{self.rank} gc{self.coarse_group} gf{self.fine_group} sb{self.shift_bits} {policy} "
                f"{self.rows}x{self.lanes}")


@dataclass(frozen=True)
class SweepSettings:
    """Settings shared by every point of a sweep.

    Parameters
    ----------
    layers : tuple of str
        MiniLM linear layers whose SQNR, energy and cycles are measured,
        in the order of :data:`golden.minilm.LINEAR_NAMES`.
    alpha : float or None
        Smoothing strength; None disables smoothing.
    narrow_bits, slice_bits : int
        As :class:`golden.lowrank.SVDMPConfig`.
    lvc_lanes : int
        FP lanes of the low-rank vector core.
    energy_table : dict or None
        Entries of :class:`golden.energy.EnergyTable` in picojoules; None
        for the default table.
    whole_model : bool
        Also measure the whole-model embedding cosine (about 10 s a point).
    area : bool
        Also measure the area with Yosys.
    area_targets : tuple of str
        Targets of :data:`sim.area.TARGETS` to synthesize for.
    """

    layers: tuple = DEFAULT_LAYERS
    alpha: float | None = 0.5
    narrow_bits: int = 4
    slice_bits: int = 4
    lvc_lanes: int = 32
    energy_table: dict | None = None
    whole_model: bool = False
    area: bool = True
    area_targets: tuple = ("generic",)

    def identity(self):
        """Return the settings that change a point's figures; they enter :func:`point_id`.

        ``whole_model`` and the area settings only add figures, so a point
        measured without them keeps its id.
        """
        return {"layers": list(self.layers), "alpha": self.alpha, "narrow_bits": self.narrow_bits,
                "slice_bits": self.slice_bits, "lvc_lanes": self.lvc_lanes, "energy_table": self.energy_table}

    def table(self):
        """Return the :class:`golden.energy.EnergyTable` of the settings."""
        from golden.energy import EnergyTable
        return EnergyTable(**(self.energy_table or {}))


def _check_layers(layers, source):
    from golden.minilm import LINEAR_NAMES
    if isinstance(layers, str) or not layers:
        raise GridError(f"{source} must be a non-empty list of MiniLM linear layers, not {layers!r}")
    unknown = [name for name in layers if name not in LINEAR_NAMES]
    if unknown:
        raise GridError(f"{source} must name MiniLM linear layers ({LINEAR_NAMES[0]} ... {LINEAR_NAMES[-1]}), "
                        f"not {unknown[0]!r}")
    return tuple(name for name in LINEAR_NAMES if name in layers)


def make_settings(**options):
    """Return checked :class:`SweepSettings` of keyword ``options``.

    The layers are put in model order, and ``layers="all"`` selects all 36.
    The settings are checked here, once, so that the messages about points
    name only the points' own parameters.

    Raises
    ------
    ValueError
        If a setting breaks a rule of its configuration class, or names an
        unknown layer or area target.
    """
    from golden.compiler import CompilerConfig
    from golden.lowrank import SVDMPConfig
    from golden.minilm import LINEAR_NAMES
    from sim.area import TARGETS

    layers = options.get("layers", DEFAULT_LAYERS)
    options["layers"] = LINEAR_NAMES if layers in ("all", ["all"], ("all",)) else _check_layers(layers, "layers")
    if options.get("energy_table") is not None:
        options["energy_table"] = dict(sorted(options["energy_table"].items()))
    if "area_targets" in options:
        options["area_targets"] = tuple(dict.fromkeys(options["area_targets"]))
    settings = SweepSettings(**options)

    CompilerConfig(alpha=settings.alpha)
    SVDMPConfig(narrow_bits=settings.narrow_bits, slice_bits=settings.slice_bits)
    lanes = settings.lvc_lanes
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise GridError(f"lvc_lanes must be a positive integer, not {lanes!r}")
    if not settings.area_targets:
        raise GridError(f"area_targets must name at least one of {', '.join(TARGETS)}")
    for target in settings.area_targets:
        if target not in TARGETS:
            raise GridError(f"area target must be one of {', '.join(TARGETS)}, not {target!r}")
    return settings


def parse_axis(name, text):
    """Parse a comma-separated list of values of axis ``name``; return a tuple without repeats.

    Raises
    ------
    GridError
        If a value is not a number of the axis type.
    """
    kind = AXES[name]
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(kind(part))
        except ValueError:
            noun = "integers" if kind is int else "numbers"
            raise GridError(f"--{name.replace('_', '-')} must be a comma-separated list of {noun}, "
                            f"not {text!r}") from None
    return tuple(dict.fromkeys(values))


def _axis_values(name, value, source):
    """Check the values of axis ``name`` from a grid file; a single value stands for a list of one."""
    kind = AXES[name]
    values = value if isinstance(value, list) else [value]
    for item in values:
        good = isinstance(item, int) if kind is int else isinstance(item, (int, float))
        if isinstance(item, bool) or not good:
            noun = "integers" if kind is int else "numbers"
            raise GridError(f"{source}: {name} must be {noun} or a list of them, not {item!r}")
    return tuple(dict.fromkeys(kind(item) for item in values))


@dataclass(frozen=True)
class SweepGrid:
    """Values of each axis; :meth:`points` iterates over every combination.

    The SVD-MP policies are the values of ``wide_count`` followed by those of
    ``energy_fraction``, and at least one of the two must have a value.
    """

    rank: tuple = (32,)
    coarse_group: tuple = (128,)
    fine_group: tuple = (16,)
    shift_bits: tuple = (2,)
    wide_count: tuple = (8,)
    energy_fraction: tuple = ()
    rows: tuple = (8,)
    lanes: tuple = (16,)

    def __post_init__(self):
        for name in AXES:
            if name in ("wide_count", "energy_fraction"):
                continue
            if not getattr(self, name):
                raise GridError(f"the grid must have at least one value of {name}")
        if not self.wide_count and not self.energy_fraction:
            raise GridError("the grid must have at least one SVD-MP policy: a value of wide_count or "
                            "of energy_fraction")

    def policies(self):
        """Return the SVD-MP policies as ``(wide_count, energy_fraction)`` pairs."""
        return ([(count, None) for count in self.wide_count]
                + [(None, fraction) for fraction in self.energy_fraction])

    def points(self):
        """Return every combination of the axes as a list of :class:`SweepPoint`."""
        combinations = itertools.product(self.rank, self.coarse_group, self.fine_group, self.shift_bits,
                                         self.policies(), self.rows, self.lanes)
        return [SweepPoint(rank=rank, coarse_group=coarse, fine_group=fine, shift_bits=shift,
                           wide_count=policy[0], energy_fraction=policy[1], rows=rows, lanes=lanes)
                for rank, coarse, fine, shift, policy, rows, lanes in combinations]


def load_grid_file(path):
    """Read a JSON or TOML grid file; return ``(axes, settings)``, two dicts of the values it sets.

    The file contains one table (object) whose keys are axis names
    (:data:`AXES`) or settings (:data:`GRID_FILE_SETTINGS`). Hyphens in keys
    read as underscores. The suffix ``.toml`` selects TOML, any other JSON.

    Raises
    ------
    GridError
        If the file cannot be read or parsed, or has an unknown key or a
        value of the wrong type.
    """
    path = Path(path)
    source = f"grid file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise GridError(f"{source} cannot be read: {error.strerror}") from None
    try:
        content = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise GridError(f"{source} is not valid {kind}: {error}") from None
    if not isinstance(content, dict):
        raise GridError(f"{source} must contain one table of axes and settings, not a {type(content).__name__}")
    axes, settings = {}, {}
    for key, value in content.items():
        name = key.replace("-", "_")
        if name in AXES:
            axes[name] = _axis_values(name, value, source)
        elif name == "layers":
            settings[name] = _check_layers(value, f"{source}: layers") if value != "all" else "all"
        elif name == "alpha":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise GridError(f"{source}: alpha must be a number in [0, 1], not {value!r}")
            settings[name] = None if value is None or value < 0 else float(value)
        elif name in GRID_FILE_SETTINGS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise GridError(f"{source}: {name} must be an integer, not {value!r}")
            settings[name] = value
        else:
            raise GridError(f"{source} has the unknown key {key!r}; known keys: "
                            f"{', '.join([*AXES, *GRID_FILE_SETTINGS])}")
    return axes, settings


# Identities


def _digest(value):
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def source_digest():
    """Return 16 hex digits of a SHA-256 of the ``golden/`` and ``hw/`` sources, read once per process.

    The golden model and the generator define every figure of a point, so
    a change of either makes new ids, and the sweep computes the points again.
    """
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("golden", "hw"):
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def point_id(point, settings):
    """Return the stable id of a point under ``settings``: 16 hex digits of a SHA-256.

    It covers the point's parameters, :meth:`SweepSettings.identity`,
    :data:`RECORD_FORMAT` and :func:`source_digest`, so two sweeps that share
    a point and the sources share its id.
    """
    return _digest({"format": RECORD_FORMAT, "sources": source_digest(), "point": asdict(point),
                    "settings": settings.identity()})


def hardware_parameters(point, settings, shapes):
    """Return the parameters that determine the core's RTL, as a dict of plain values.

    The SVD-MP policy and ``narrow_bits`` are left out: the core loads each
    component's significand width at run time, so they change no gate.
    ``max_k`` and ``max_n`` size the memories for the largest selected layer.
    """
    max_k, max_n = _memory_shape(point, settings, shapes)
    from golden.lowrank import SVDMPConfig
    return {
        "rows": point.rows, "lanes": point.lanes, "coarse_group": point.coarse_group,
        "fine_group": point.fine_group, "shift_bits": point.shift_bits, "rank": point.rank,
        "lvc_lanes": settings.lvc_lanes, "slice_bits": settings.slice_bits,
        "wide_bits": SVDMPConfig().wide_bits, "max_k": max_k, "max_n": max_n,
    }


def hardware_id(parameters):
    """Return the stable id of a hardware configuration (:func:`hardware_parameters`).

    It also covers :func:`source_digest` and the version of the area flow.
    """
    from sim.area import FLOW_VERSION
    return _digest({"format": RECORD_FORMAT, "sources": source_digest(), "area_flow": FLOW_VERSION,
                    "hardware": parameters})


# Configurations and the grid check


@dataclass(frozen=True)
class PointConfigs:
    """The configuration objects of one point.

    Attributes
    ----------
    compiler : golden.compiler.CompilerConfig
    core : hw.hetero.CoreConfig
        A core whose memories hold the largest selected layer.
    """

    compiler: object
    core: object


def layer_shapes(captures, layers):
    """Return ``{layer: (tokens, K, N)}`` of the selected layers of a MiniLM capture."""
    return {name: (captures[name].x.shape[0], captures[name].x.shape[1], captures[name].weight.shape[0])
            for name in layers}


def _memory_shape(point, settings, shapes):
    """Return (max_k, max_n): the largest K and N of the layers, rounded up as the core requires."""
    n_multiple = math.lcm(point.rows, settings.lvc_lanes) if point.rank else point.rows
    max_k = max(k for _, k, _ in shapes.values())
    max_n = max(n for _, _, n in shapes.values())
    return -(-max_k // point.coarse_group) * point.coarse_group, -(-max_n // n_multiple) * n_multiple


def point_configs(point, settings, shapes):
    """Build the configuration objects of a point and check it against every selected layer.

    Parameters
    ----------
    point : SweepPoint
    settings : SweepSettings
    shapes : dict of str to (int, int, int)
        Tokens, K and N of each selected layer (:func:`layer_shapes`).

    Returns
    -------
    PointConfigs

    Raises
    ------
    ValueError, TypeError
        If a configuration class rejects a parameter; its message names the
        parameter, the rule and the value. Also if ``wide_count`` is above
        ``rank``, the rank is above a layer's min(N, K), or the core cannot
        run a layer.
    """
    from golden.compiler import CompilerConfig
    from golden.hgq import HGQConfig
    from golden.lowrank import SVDMPConfig
    from hw.config import RMCConfig
    from hw.hetero import CoreConfig

    quant = HGQConfig(coarse_group=point.coarse_group, fine_group=point.fine_group, shift_bits=point.shift_bits)
    svdmp = SVDMPConfig(narrow_bits=settings.narrow_bits, slice_bits=settings.slice_bits,
                        wide_count=point.wide_count, energy_fraction=point.energy_fraction)
    compiler = CompilerConfig(rank=point.rank, alpha=settings.alpha, quant=quant, svdmp=svdmp)
    if point.wide_count is not None and point.wide_count > point.rank:
        raise ValueError(f"wide_count must be at most rank ({point.rank}), not {point.wide_count}")
    for name, (_, k, n) in shapes.items():
        if point.rank > min(n, k):
            raise ValueError(f"rank must be at most min(N, K) = {min(n, k)} of layer {name}, not {point.rank}")
    rmc = RMCConfig(rows=point.rows, lanes=point.lanes, quant=quant)
    max_k, max_n = _memory_shape(point, settings, shapes)
    core = CoreConfig(rmc=rmc, rank=point.rank, lvc_lanes=settings.lvc_lanes, svdmp=svdmp, max_k=max_k, max_n=max_n)
    for name, (_, k, n) in shapes.items():
        try:
            core.check_shape(k, n)
        except ValueError as error:
            raise ValueError(f"layer {name} does not fit the core: {error}") from None
    return PointConfigs(compiler=compiler, core=core)


def validate_points(points, settings, shapes, *, skip_invalid=False):
    """Check every point (:func:`point_configs`); return the valid points and the messages of the others.

    Raises
    ------
    GridError
        If every point is invalid or, unless ``skip_invalid``, any point is.
        The message names the invalid points (the first five) and their
        errors.
    """
    valid, errors = [], []
    for point in points:
        try:
            point_configs(point, settings, shapes)
        except (ValueError, TypeError) as error:
            errors.append(f"{point.describe()}: {error}")
        else:
            valid.append(point)
    listed = "\n  ".join(errors[:5])
    if len(errors) > 5:
        listed += f"\n  ... and {len(errors) - 5} more"
    if errors and not valid:
        raise GridError(f"all {len(points)} grid points are invalid:\n  {listed}")
    if errors and not skip_invalid:
        raise GridError(f"{len(errors)} of {len(points)} grid points are invalid, so no point was run "
                        f"(--skip-invalid runs the valid ones):\n  {listed}")
    return valid, errors


# Work of one point and of one hardware configuration, which runs in the workers


@functools.cache
def default_captures():
    """Return the MiniLM layer captures of the default text, once per process."""
    from golden.minilm import capture_linear_layers
    return capture_linear_layers()


def _numeric(value):
    """Return a NumPy scalar as a Python float or int, for JSON."""
    return value.item() if hasattr(value, "item") else value


def _whole_model_figures(configs):
    from golden.accuracy import DEFAULT_SCHEME
    from golden.model_accuracy import evaluate_model

    compiler = configs.compiler
    result = evaluate_model((DEFAULT_SCHEME,), quant=compiler.quant, rank=compiler.rank, alpha=compiler.alpha,
                            svdmp=compiler.svdmp).results[DEFAULT_SCHEME]
    return {"model_sqnr_mean_db": result.mean_sqnr_db, "model_cosine_mean": result.mean_cosine,
            "model_cosine_min": result.min_cosine}


def evaluate_point(point, settings):
    """Compute the accuracy, energy and cycle figures of one point; return its record.

    For each selected layer: the compiled layer's output SQNR, its energy
    (:func:`hw.perf.layer_energy`, bias add included) and its cycles
    (:func:`hw.perf.predict_cycles`). The figures are the mean and minimum
    SQNR and the energy per token of all selected layers in nJ (an
    estimate). Then come their TOPS/W estimate, their cycles per token and
    PE utilization, and the SVD-MP slice ratio against an all-wide low-rank
    path. With ``settings.whole_model``, the whole-model figures follow.

    Returns
    -------
    dict
        The record of ``results.jsonl``: ``id``, ``format``, ``point``,
        ``settings``, ``status`` ("ok"), ``figures``, ``layer_sqnr_db``,
        ``seconds`` and ``finished`` (UTC, ISO 8601).
    """
    import numpy as np

    from golden.accuracy import sqnr_db
    from golden.compiler import compile_layer, run_layer
    from golden.opcost import layer_op_counts, slice_ratio
    from hw.perf import layer_energy, predict_cycles

    started = time.perf_counter()
    captures = default_captures()
    configs = point_configs(point, settings, layer_shapes(captures, settings.layers))
    table = settings.table()
    layer_sqnr = {}
    picojoules = ops = cycles = busy = 0
    mixed_counts, wide_counts = [], []
    for name in settings.layers:
        x, weight = captures[name].x, captures[name].weight
        tokens, k = x.shape
        n = weight.shape[0]
        layer = compile_layer(weight, None, x, configs.compiler)
        reference = x.astype(np.float64) @ weight.astype(np.float64).T
        layer_sqnr[name] = sqnr_db(reference, run_layer(layer, x).output)
        bits = layer.significand_bits
        energy = layer_energy(configs.core, tokens, k, n, bits, table=table)
        prediction = predict_cycles(configs.core, tokens, k, n, bits)
        picojoules += energy.picojoules
        ops += energy.ops
        cycles += prediction.cycles
        busy += prediction.busy
        mixed_counts.append(layer_op_counts(layer, tokens))
        wide_counts.append(layer_op_counts(layer, tokens, all_wide=True))

    tokens = captures[settings.layers[0]].x.shape[0]
    figures = {
        "sqnr_mean_db": float(np.mean(list(layer_sqnr.values()))),
        "sqnr_min_db": float(min(layer_sqnr.values())),
        "slice_ratio": slice_ratio(mixed_counts, wide_counts) if point.rank else None,
        "energy_nj_per_token": picojoules / tokens / 1e3,
        "tops_per_watt": ops / picojoules,
        "cycles_per_token": cycles / tokens,
        "pe_utilization": busy / cycles,
    }
    if settings.whole_model:
        figures.update(_whole_model_figures(configs))
    return {
        "id": point_id(point, settings), "format": RECORD_FORMAT, "point": asdict(point),
        "settings": settings.identity(), "status": "ok",
        "figures": {name: _numeric(value) for name, value in figures.items()},
        "layer_sqnr_db": {name: float(value) for name, value in layer_sqnr.items()},
        "seconds": round(time.perf_counter() - started, 3), "finished": _now(),
    }


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def core_config(parameters):
    """Return the :class:`hw.hetero.CoreConfig` of :func:`hardware_parameters`."""
    from golden.hgq import HGQConfig
    from golden.lowrank import SVDMPConfig
    from hw.config import RMCConfig
    from hw.hetero import CoreConfig

    p = parameters
    quant = HGQConfig(coarse_group=p["coarse_group"], fine_group=p["fine_group"], shift_bits=p["shift_bits"])
    return CoreConfig(rmc=RMCConfig(rows=p["rows"], lanes=p["lanes"], quant=quant), rank=p["rank"],
                      lvc_lanes=p["lvc_lanes"], svdmp=SVDMPConfig(wide_bits=p["wide_bits"], slice_bits=p["slice_bits"]),
                      max_k=p["max_k"], max_n=p["max_n"])


def measure_area(parameters, targets=("generic",)):
    """Measure the area of the core of ``parameters`` (:func:`hardware_parameters`); return its area record.

    Returns
    -------
    dict
        The record of ``area.jsonl``: ``id``, ``format``, ``hardware``,
        ``targets``, ``status`` ("ok"), ``area`` (:func:`area_figures`),
        ``seconds`` and ``finished``.
    """
    started = time.perf_counter()
    area = area_figures(parameters, targets)
    return {
        "id": hardware_id(parameters), "format": RECORD_FORMAT, "hardware": parameters, "targets": list(targets),
        "status": "ok", "area": area, "seconds": round(time.perf_counter() - started, 3), "finished": _now(),
    }


def area_figures(parameters, targets=("generic",)):
    """Synthesize the core of ``parameters`` with :mod:`sim.area`; return its totals per metric.

    The keys are ``<target>_<metric>`` for every metric of
    :data:`sim.area.METRICS` and, for the generic target, ``transistors``
    (the ``stat -tech cmos`` estimate of the logic) and ``memory_bits``
    (the flow keeps memories as memories and reports their bits). Results
    come from the area cache when the same Verilog was synthesized before.
    """
    from sim.area import METRICS, AreaCache, core_design, synthesize, total_metric

    cache = AreaCache()
    design = core_design(core_config(parameters), cache=cache)
    results = synthesize(design, targets, cache=cache, jobs=1)
    figures = {}
    for target, result in results.items():
        for name in METRICS[target]:
            figures[f"{target}_{name}"] = total_metric(result, name)
        if target == "generic":
            figures["transistors"] = total_metric(result, "transistors")
            figures["memory_bits"] = sum(memory["bits"] for memory in result["memories"])
    return figures


# Records and resume


class ResultStore:
    """The JSON-lines files of an output folder: point records and area records, appended as they finish.

    A line that does not parse, such as the last line of a run that was
    killed while writing it, is skipped and counted in :attr:`skipped_lines`.
    Of several records with the same id the last one counts.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise GridError(f"output folder {str(self.folder)!r} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.points_path = self.folder / POINTS_FILE
        self.area_path = self.folder / AREA_FILE
        self.skipped_lines = 0
        self.points = self._read(self.points_path)
        self.areas = self._read(self.area_path)

    def _read(self, path):
        records = {}
        if not path.exists():
            return records
        with path.open("rb") as file:
            data = file.read()
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.skipped_lines += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records[record["id"]] = record
            else:
                self.skipped_lines += 1
        if data and not data.endswith(b"\n"):
            # The next record must start on a line of its own.
            with path.open("ab") as file:
                file.write(b"\n")
        return records

    def _append(self, path, record):
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def add_point(self, record):
        """Append a point record and keep it."""
        self._append(self.points_path, record)
        self.points[record["id"]] = record

    def add_area(self, record):
        """Append an area record and keep it."""
        self._append(self.area_path, record)
        self.areas[record["id"]] = record

    def finished_point(self, identifier, settings):
        """Return the finished record of a point that has every figure ``settings`` requests, or None."""
        record = self.points.get(identifier)
        if record is None or record.get("status") != "ok":
            return None
        if settings.whole_model and "model_cosine_mean" not in record.get("figures", {}):
            return None
        return record

    def finished_area(self, identifier, targets):
        """Return the finished area record of a hardware id that covers ``targets``, or None."""
        record = self.areas.get(identifier)
        if record is None or record.get("status") != "ok" or not set(targets) <= set(record.get("targets", ())):
            return None
        return record


# Executors


def worker_check():
    """Return the record format, the source digest and the project's folder, as seen by a worker."""
    return {"format": RECORD_FORMAT, "sources": source_digest(),
            "project": str(Path(__file__).resolve().parent.parent)}


@contextlib.contextmanager
def open_executor(workers=None, scheduler=None, *, connect_timeout=10.0):
    """Yield a ``concurrent.futures`` executor: local processes, or a Dask cluster.

    Parameters
    ----------
    workers : int, optional
        Local worker processes; default ``os.cpu_count()``. Ignored with
        ``scheduler``.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler, such as
        ``tcp://host:8786``. Its workers must have the project installed.
    connect_timeout : float
        Seconds to wait for the scheduler and for its first worker.

    Raises
    ------
    RuntimeError
        If the scheduler cannot be reached, has no worker, or a worker
        cannot import the project or runs another record format.
    """
    if scheduler is None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        # Spawned workers start clean: no threads or BLAS state copied from this process.
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=context)
        try:
            yield executor
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return

    from distributed import Client

    try:
        client = Client(scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError) as error:
        raise RuntimeError(f"cannot connect to the Dask scheduler at {scheduler!r}: {error}. Start one with "
                           "`dask scheduler` and workers with `dask worker ADDRESS`") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=connect_timeout)
        except TimeoutError:
            raise RuntimeError(f"the Dask scheduler at {scheduler!r} has no workers after {connect_timeout:g} s; "
                               "start them with `dask worker ADDRESS`") from None
        try:
            answers = client.run(worker_check)
        except Exception as error:  # Whatever a worker raised while importing or running the check.
            raise RuntimeError(f"a Dask worker of {scheduler!r} cannot run the sweep: {error!r}. Install the "
                               "project in the workers' Python environment (pip install -e .)") from None
        for address, answer in answers.items():
            if (answer["format"], answer["sources"]) != (RECORD_FORMAT, source_digest()):
                raise RuntimeError(f"the Dask worker {address} runs other sources: record format "
                                   f"{answer['format']} and source digest {answer['sources']} in "
                                   f"{answer['project']}, not {RECORD_FORMAT} and {source_digest()}. Install "
                                   "the same version of the project there")
        executor = client.get_executor(pure=False)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)


# The sweep


@dataclass
class SweepOutcome:
    """Results of :func:`run_sweep`.

    Attributes
    ----------
    rows : list of dict
        One row per point, in grid order (:func:`write_outputs`).
    computed, reused, failed : int
        Points computed by this run, reused from earlier runs, and failed.
    errors : dict of str to str
        Error message per failed point id.
    skipped_lines : int
        Unreadable lines of the results files.
    paths : dict of str to Path
        Output files by kind (csv, json, pareto_area, pareto_energy).
    pareto : dict of str to int
        Points on each Pareto front.
    """

    rows: list
    computed: int = 0
    reused: int = 0
    failed: int = 0
    errors: dict = field(default_factory=dict)
    skipped_lines: int = 0
    paths: dict = field(default_factory=dict)
    pareto: dict = field(default_factory=dict)


def _error_text(error):
    return f"{type(error).__name__}: {error}"


def run_sweep(points, settings, folder, executor, *, shapes=None, progress=True, log=print):
    """Evaluate the points on ``executor``, reusing finished records of ``folder``; write the outputs.

    Parameters
    ----------
    points : list of SweepPoint
        Checked points (:func:`validate_points`), without repeats.
    settings : SweepSettings
    folder : path-like
        Output folder; it keeps the JSON-lines records between runs.
    executor : concurrent.futures.Executor
        Runs :func:`evaluate_point` and :func:`measure_area`.
    shapes : dict, optional
        :func:`layer_shapes` of the selected layers; captured here if None.
    progress : bool
        Show a progress bar over the points on stderr.
    log : callable
        Receives one line per failed point or area.

    Returns
    -------
    SweepOutcome
    """
    from tqdm import tqdm

    store = ResultStore(folder)
    shapes = shapes or layer_shapes(default_captures(), settings.layers)
    ids = {point: point_id(point, settings) for point in points}
    hardware = {}
    if settings.area:
        hardware = {point: hardware_parameters(point, settings, shapes) for point in points}
    hardware_ids = {point: hardware_id(parameters) for point, parameters in hardware.items()}

    point_todo = [point for point in points if store.finished_point(ids[point], settings) is None]
    area_todo = {}
    for point, parameters in hardware.items():
        if store.finished_area(hardware_ids[point], settings.area_targets) is None:
            area_todo.setdefault(hardware_ids[point], parameters)
    waiting = {point for point in points
               if point in point_todo or (settings.area and hardware_ids[point] in area_todo)}
    outcome = SweepOutcome(rows=[], reused=len(points) - len(waiting), skipped_lines=store.skipped_lines)

    futures = {}
    for key, parameters in area_todo.items():
        futures[executor.submit(measure_area, parameters, settings.area_targets)] = ("area", key)
    for point in point_todo:
        futures[executor.submit(evaluate_point, point, settings)] = ("point", point)

    pending_points, pending_areas = set(point_todo), set(area_todo)
    bar = tqdm(total=len(points), initial=outcome.reused, unit="point", desc="sweep", disable=not progress,
               dynamic_ncols=True)
    try:
        for future in as_completed(futures):
            kind, subject = futures[future]
            expected = subject if kind == "area" else ids[subject]
            try:
                record = future.result()
                if record["id"] != expected:
                    raise RuntimeError(f"the worker computed the id {record['id']}, not {expected}, because its "
                                       "golden/ or hw/ sources differ from this process's; rerun the sweep "
                                       "once the sources stay unchanged")
            except Exception as error:  # A worker's failure is recorded and the sweep goes on.
                record = {"id": expected, "format": RECORD_FORMAT, "status": "failed",
                          "error": _error_text(error), "finished": _now()}
                label = f"area of hardware {subject}" if kind == "area" else f"point {subject.describe()}"
                (bar.write if progress else log)(f"failed: {label}: {record['error']}")
            if kind == "area":
                store.add_area(record)
                pending_areas.discard(subject)
            else:
                store.add_point(record)
                pending_points.discard(subject)
            # A point is finished when neither its figures nor its area are pending.
            for point in list(waiting):
                if point not in pending_points and hardware_ids.get(point) not in pending_areas:
                    waiting.discard(point)
                    bar.update()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        bar.close()

    outcome.rows = [_row(point, store, settings, ids, hardware_ids) for point in points]
    outcome.errors = {row["id"]: row["error"] for row in outcome.rows if row["status"] != "ok"}
    outcome.failed = len(outcome.errors)
    outcome.computed = len(points) - outcome.reused - outcome.failed
    outcome.paths, outcome.pareto = write_outputs(outcome.rows, settings, store.folder)
    return outcome


# Figures of a point record, in the order of the output columns.
FIGURES = ("sqnr_mean_db", "sqnr_min_db", "model_sqnr_mean_db", "model_cosine_mean", "model_cosine_min",
           "energy_nj_per_token", "tops_per_watt", "cycles_per_token", "pe_utilization", "slice_ratio")


def _row(point, store, settings, ids, hardware_ids):
    """Return the output row of a point: its parameters, status and every figure."""
    record = store.points.get(ids[point], {})
    row = {"id": ids[point], **asdict(point), "status": record.get("status", "missing")}
    figures = record.get("figures", {})
    row.update({name: figures[name] for name in FIGURES if name in figures})
    if settings.area:
        area = store.areas.get(hardware_ids[point], {})
        row.update({f"area_{name}": value for name, value in area.get("area", {}).items()})
        row["hardware_id"] = hardware_ids[point]
    for name in settings.layers:
        row[f"sqnr_db.{name}"] = record.get("layer_sqnr_db", {}).get(name)
    row["error"] = record.get("error")
    if settings.area and area.get("status") != "ok" and row["status"] == "ok":
        row["status"] = area.get("status", "missing")
        row["error"] = "area: " + area.get("error", "not measured")
    return row


# Pareto fronts and output files


def pareto_front(costs, qualities):
    """Return a list of booleans: True for the points that no other point dominates.

    A point dominates another if its cost is at most and its quality at
    least the other's, and one of the two is strictly better. Equal points
    are both on the front.

    >>> pareto_front([1, 2, 3, 2], [10, 12, 11, 9])
    [True, True, False, False]
    """
    front = []
    for i, (cost, quality) in enumerate(zip(costs, qualities)):
        dominated = any(c <= cost and q >= quality and (c < cost or q > quality)
                        for j, (c, q) in enumerate(zip(costs, qualities)) if j != i)
        front.append(not dominated)
    return front


# Each Pareto plot: the cost figure, its axis title, and the output file.
PARETO_PLOTS = {
    "area": ("area_transistors", "logic area: transistors (Yosys stat -tech cmos estimate, memories excluded)",
             "pareto_area.png"),
    "energy": ("energy_nj_per_token", "energy per token of the selected layers (nJ, estimate)",
               "pareto_energy.png"),
}


def _mark_fronts(rows, settings):
    """Add a ``pareto_<kind>`` column to the rows; return the number of front points per kind."""
    counts = {}
    for kind, (cost, _, _) in PARETO_PLOTS.items():
        if kind == "area" and not settings.area:
            continue
        usable = [row for row in rows if row["status"] == "ok" and row.get(cost) is not None]
        front = pareto_front([row[cost] for row in usable], [row["sqnr_mean_db"] for row in usable])
        for row in rows:
            row[f"pareto_{kind}"] = False
        for row, on_front in zip(usable, front):
            row[f"pareto_{kind}"] = on_front
        counts[kind] = sum(front)
    return counts


def _plot_pareto(rows, kind, path):
    from matplotlib.figure import Figure

    cost, title, _ = PARETO_PLOTS[kind]
    usable = [row for row in rows if row["status"] == "ok" and row.get(cost) is not None]
    front = sorted((row for row in usable if row[f"pareto_{kind}"]), key=lambda row: row[cost])
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter([row[cost] for row in usable], [row["sqnr_mean_db"] for row in usable], s=18, color="0.6",
                 label="point")
    axes.step([row[cost] for row in front], [row["sqnr_mean_db"] for row in front], where="post", color="C3",
              linewidth=1)
    axes.scatter([row[cost] for row in front], [row["sqnr_mean_db"] for row in front], s=30, color="C3",
                 label="Pareto front", zorder=3)
    for row in front:
        axes.annotate(SweepPoint(**{name: row[name] for name in AXES}).label(), (row[cost], row["sqnr_mean_db"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=6)
    axes.set_xlabel(title)
    axes.set_ylabel("mean SQNR of the selected layers (dB)")
    axes.set_title(f"SQNR against {kind}: {len(usable)} points, {len(front)} on the front")
    axes.grid(True, linewidth=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=120)


def _json_value(value):
    """Return ``value`` for strict JSON: infinite floats (an error-free layer's SQNR) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_outputs(rows, settings, folder):
    """Mark the Pareto fronts, write ``results.csv``, ``results.json`` and the Pareto plots; return paths and counts."""
    folder = Path(folder)
    pareto = _mark_fronts(rows, settings)
    paths = {"csv": folder / "results.csv", "json": folder / "results.json"}
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with paths["csv"].open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    document = {
        "format": RECORD_FORMAT,
        "settings": {**settings.identity(), "whole_model": settings.whole_model, "area": settings.area,
                     "area_targets": list(settings.area_targets) if settings.area else []},
        "pareto": pareto, "points": [{key: _json_value(value) for key, value in row.items()} for row in rows],
    }
    paths["json"].write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    for kind in pareto:
        path = folder / PARETO_PLOTS[kind][2]
        _plot_pareto(rows, kind, path)
        paths[f"pareto_{kind}"] = path
    return paths, pareto
