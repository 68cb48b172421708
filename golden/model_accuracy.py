"""Whole-model accuracy: all-MiniLM-L6-v2 with every linear layer quantized by one scheme.

For each scheme of :data:`golden.accuracy.MODEL_SCHEMES`:

1. **Calibration.** The float32 model runs the calibration text
   (:data:`golden.minilm.DEFAULT_TEXT` by default), and each of the 36
   linear layers is compiled from its weight, its bias and the activations
   captured there (:func:`golden.accuracy.compile_model_scheme`). The
   activations set the smoothing factors and the searched alpha.
2. **Evaluation.** Each evaluation text runs alone through
   :func:`golden.minilm.encode` with every linear layer replaced by the
   compiled one, so each layer receives the activations of the quantized model
   itself.
3. **Per-layer SQNR.** For each layer, ``10 log10(sum y^2 / sum (y - y_q)^2)``
   over all evaluation tokens, where ``y = X W^T`` in float64 from the
   layer's input in that pass and ``y_q`` the scheme's ``X W^T``, both
   without the bias.
4. **Embedding cosine.** The cosine between each text's embedding and the
   one of the float32 model (:func:`golden.minilm.encode`).

Operation counts are per token and summed over the 36 layers
(:meth:`golden.accuracy.SchemeLayer.op_counts`).
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import minilm
from .accuracy import (ALPHA_GRID, DEFAULT_SCHEME, MODEL_SCHEMES, REFERENCE_SCHEME, compile_model_scheme,
                       fp_multiplies)
from .hgq import HGQConfig
from .lowrank import SVDMPConfig
from .opcost import OpCounts

__all__ = [
    "EVALUATION_TEXTS", "GOAL_MEAN_SQNR_DB", "GOAL_MIN_COSINE", "GOAL_RATIO_GROUP64", "GOAL_RATIO_FINE_GROUP",
    "SchemeAccuracy", "Goal", "ModelAccuracy", "compile_model", "evaluate_scheme", "evaluate_model",
]

# Evaluation sentences: none of them is part of the calibration text, and
# they cover other topics (weather, music, science, finance, daily life).
EVALUATION_TEXTS = (
    "A heavy storm closed the mountain pass, so the trucks waited in the valley until dawn.",
    "Can you recommend a quiet restaurant near the harbour that serves fresh fish?",
    "The violinist played the sonata from memory and received a standing ovation.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "My grandmother planted tomatoes, beans and sunflowers along the garden fence.",
    "The central bank raised interest rates by half a percentage point on Thursday.",
    "Please restart the router if the wireless connection keeps dropping.",
    "Children in the village walk three kilometres to school every morning.",
    "The museum's new exhibit shows Roman coins found under a parking lot.",
    "He forgot his umbrella, and the rain soaked his shirt within minutes.",
    "Volcanic ash from the eruption grounded flights across northern Europe.",
    "She solved the puzzle in eleven moves, which beat the previous record.",
)

# Goals of the default scheme at the default configuration.
GOAL_MEAN_SQNR_DB = 21.0
GOAL_MIN_COSINE = 0.99
# Residual-path FP multiplies of the default scheme, relative to the group-64
# FP16 scheme and to conventional groups of Gf with FP16 scales.
GOAL_RATIO_GROUP64 = 0.5
GOAL_RATIO_FINE_GROUP = 1 / 8


@dataclass(frozen=True)
class SchemeAccuracy:
    """Whole-model results of one scheme.

    Attributes
    ----------
    scheme : str
    layer_sqnr_db : dict of str to float
        Output SQNR of each linear layer in dB, keyed and ordered as
        :data:`golden.minilm.LINEAR_NAMES`.
    cosines : tuple of float
        Embedding cosine of each evaluation text against the float32 model.
    counts : OpCounts
        Operations per token, summed over the layers.
    alphas : dict of str to float or None
        Smoothing strength of each layer; None where the scheme does not smooth.
    compile_seconds, run_seconds : float
        Wall time of the compilation and of the evaluation pass.
    """

    scheme: str
    layer_sqnr_db: dict
    cosines: tuple
    counts: OpCounts
    alphas: dict
    compile_seconds: float = 0.0
    run_seconds: float = 0.0

    @property
    def mean_sqnr_db(self):
        return float(np.mean(list(self.layer_sqnr_db.values())))

    @property
    def min_sqnr_db(self):
        return float(min(self.layer_sqnr_db.values()))

    @property
    def mean_cosine(self):
        return float(np.mean(self.cosines))

    @property
    def min_cosine(self):
        return float(min(self.cosines))

    @property
    def fp_multiplies(self):
        """FP multiplies of the residual path per token (:func:`golden.accuracy.fp_multiplies`)."""
        return fp_multiplies(self.counts)


@dataclass(frozen=True)
class Goal:
    """One goal of the default scheme: the measured value, the bound, and whether it is met.

    ``at_least`` is True for a lower bound and False for an upper bound.
    """

    name: str
    value: float
    bound: float
    at_least: bool

    @property
    def met(self):
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def describe(self):
        """Return the goal as one line, such as ``embedding cosine min 0.9600 >= 0.99: NOT met``."""
        relation = ">=" if self.at_least else "<="
        return f"{self.name} {self.value:.4g} {relation} {self.bound:.4g}: {'met' if self.met else 'NOT met'}"


@dataclass(frozen=True)
class ModelAccuracy:
    """Results of :func:`evaluate_model`.

    Attributes
    ----------
    results : dict of str to SchemeAccuracy
        In the order of the schemes run.
    texts : tuple of str
        The evaluation texts.
    tokens : tuple of int
        Tokens of each evaluation text.
    calibration_tokens : int
    quant : HGQConfig
    rank : int
    alpha : float or None
    svdmp : SVDMPConfig
    alpha_grid : tuple of float
    """

    results: dict
    texts: tuple
    tokens: tuple
    calibration_tokens: int
    quant: HGQConfig = field(default_factory=HGQConfig)
    rank: int = 32
    alpha: float | None = 0.5
    svdmp: SVDMPConfig = field(default_factory=SVDMPConfig)
    alpha_grid: tuple = ALPHA_GRID

    def fp_multiply_ratio(self, scheme, reference=REFERENCE_SCHEME):
        """Return the residual FP multiplies of ``scheme`` over those of ``reference``, or None if either is missing."""
        if scheme not in self.results or reference not in self.results:
            return None
        return self.results[scheme].fp_multiplies / self.results[reference].fp_multiplies

    def goals(self):
        """Return the goals of the default scheme that the schemes run allow to check."""
        if DEFAULT_SCHEME not in self.results:
            return []
        default = self.results[DEFAULT_SCHEME]
        goals = [
            Goal("mean per-layer SQNR (dB)", default.mean_sqnr_db, GOAL_MEAN_SQNR_DB, True),
            Goal("embedding cosine min", default.min_cosine, GOAL_MIN_COSINE, True),
        ]
        ratio_goals = ((REFERENCE_SCHEME, GOAL_RATIO_GROUP64), ("int4 fine-group fp16", GOAL_RATIO_FINE_GROUP))
        for reference, bound in ratio_goals:
            ratio = self.fp_multiply_ratio(DEFAULT_SCHEME, reference)
            if ratio is not None:
                goals.append(Goal(f"residual FP multiplies / {reference}", ratio, bound, False))
        return goals

    def summary(self):
        """Return the results as a dict of plain Python values, for JSON."""
        schemes = {}
        for name, result in self.results.items():
            schemes[name] = {
                "mean_sqnr_db": result.mean_sqnr_db, "min_sqnr_db": result.min_sqnr_db,
                "mean_cosine": result.mean_cosine, "min_cosine": result.min_cosine,
                "cosines": list(result.cosines), "layer_sqnr_db": result.layer_sqnr_db,
                "alphas": result.alphas,
                "fp_multiplies_per_token": result.fp_multiplies,
                "fp_multiply_ratio": self.fp_multiply_ratio(name),
                "int_to_fp32_per_token": result.counts.int_to_fp32,
                "lowrank_slices_per_token": result.counts.lowrank_slices,
                "compile_seconds": round(result.compile_seconds, 3), "run_seconds": round(result.run_seconds, 3),
            }
        goals = self.goals()
        return {
            "texts": len(self.texts), "tokens": sum(self.tokens), "calibration_tokens": self.calibration_tokens,
            "rank": self.rank, "alpha": self.alpha, "alpha_grid": list(self.alpha_grid),
            "quant": {"coarse_group": self.quant.coarse_group, "fine_group": self.quant.fine_group,
                      "shift_bits": self.quant.shift_bits},
            "svdmp": {"wide_bits": self.svdmp.wide_bits, "narrow_bits": self.svdmp.narrow_bits,
                      "slice_bits": self.svdmp.slice_bits, "wide_count": self.svdmp.wide_count,
                      "energy_fraction": self.svdmp.energy_fraction},
            "reference_scheme": REFERENCE_SCHEME, "default_scheme": DEFAULT_SCHEME, "schemes": schemes,
            "goals": [{"name": goal.name, "value": goal.value, "bound": goal.bound,
                       "relation": ">=" if goal.at_least else "<=", "met": goal.met} for goal in goals],
            "goals_met": all(goal.met for goal in goals),
        }


def compile_model(scheme, captures, **options):
    """Compile every captured layer with ``scheme``; return ``{name: SchemeLayer}``.

    ``captures`` maps layer names to :class:`golden.minilm.LinearCapture`
    objects of the calibration pass, and ``options`` are keyword arguments
    of :func:`golden.accuracy.compile_model_scheme`.
    """
    return {name: compile_model_scheme(scheme, capture.weight, capture.bias, capture.x, **options)
            for name, capture in captures.items()}


def _check_texts(texts):
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a str. Wrap a single text in a list.")
    if len(texts) == 0:
        raise ValueError("texts must contain at least one text")


def _cosines(reference, embeddings):
    reference = reference.astype(np.float64)
    embeddings = embeddings.astype(np.float64)
    products = np.sum(reference * embeddings, axis=1)
    return products / (np.linalg.norm(reference, axis=1) * np.linalg.norm(embeddings, axis=1))


def evaluate_scheme(scheme, layers, texts, reference_embeddings):
    """Run the texts through MiniLM with the compiled ``layers``; return per-layer SQNR and cosines.

    Parameters
    ----------
    scheme : str
    layers : dict of str to SchemeLayer
        A compiled layer for every name of :data:`golden.minilm.LINEAR_NAMES`.
    texts : sequence of str
    reference_embeddings : ndarray, shape (len(texts), 384)
        Embeddings of the float32 model.

    Returns
    -------
    SchemeAccuracy
        Without wall times.
    """
    _check_texts(texts)
    missing = [name for name in minilm.LINEAR_NAMES if name not in layers]
    if missing:
        raise ValueError(f"layers must contain every MiniLM linear layer, but {missing[0]!r} is missing")
    signal = dict.fromkeys(minilm.LINEAR_NAMES, 0.0)
    noise = dict.fromkeys(minilm.LINEAR_NAMES, 0.0)

    def quantized_linear(name, x, weight, bias):
        reference = x.astype(np.float64) @ weight.astype(np.float64).T
        products, output = layers[name].outputs(x)
        signal[name] += float(np.sum(reference ** 2))
        noise[name] += float(np.sum((reference - products.astype(np.float64)) ** 2))
        return output

    embeddings = minilm.encode(list(texts), quantized_linear)
    layer_sqnr = {name: float("inf") if noise[name] == 0 else float(10.0 * np.log10(signal[name] / noise[name]))
                  for name in minilm.LINEAR_NAMES}
    counts = sum((layers[name].op_counts() for name in minilm.LINEAR_NAMES), OpCounts())
    return SchemeAccuracy(
        scheme=scheme, layer_sqnr_db=layer_sqnr,
        cosines=tuple(float(c) for c in _cosines(reference_embeddings, embeddings)),
        counts=counts, alphas={name: layers[name].alpha for name in minilm.LINEAR_NAMES})


def evaluate_model(schemes=MODEL_SCHEMES, texts=EVALUATION_TEXTS, *, calibration_text=minilm.DEFAULT_TEXT,
                   quant=HGQConfig(), rank=32, alpha=0.5, svdmp=SVDMPConfig(), alpha_grid=ALPHA_GRID,
                   progress=None):
    """Compile and run MiniLM with every linear layer quantized, for each scheme.

    Parameters
    ----------
    schemes : sequence of str
        Names from :data:`golden.accuracy.MODEL_SCHEMES`.
    texts : sequence of str
        Evaluation texts, each run alone.
    calibration_text : str
        Text of the calibration pass.
    quant, rank, alpha, svdmp, alpha_grid
        As :func:`golden.accuracy.compile_model_scheme`.
    progress : callable, optional
        Called with one line of text when a scheme starts and when it ends.

    Returns
    -------
    ModelAccuracy

    Raises
    ------
    ValueError
        On an unknown scheme, an empty or invalid text, or invalid settings.
    """
    unknown = [scheme for scheme in schemes if scheme not in MODEL_SCHEMES]
    if unknown:
        raise ValueError(f"schemes must be names from MODEL_SCHEMES, not {unknown[0]!r}")
    _check_texts(texts)
    texts = tuple(texts)
    report = progress or (lambda line: None)
    options = {"quant": quant, "rank": rank, "alpha": alpha, "svdmp": svdmp, "alpha_grid": tuple(alpha_grid)}

    calibration = minilm.capture_linear_layers(calibration_text)
    tokens = tuple(int(minilm.tokenize(text, name=f"texts[{row}]").size) for row, text in enumerate(texts))
    reference = minilm.encode(list(texts))
    results = {}
    for index, scheme in enumerate(schemes, start=1):
        label = f"[{index}/{len(schemes)}] {scheme}"
        report(f"{label}: compiling {len(calibration)} layers ...")
        started = time.perf_counter()
        layers = compile_model(scheme, calibration, **options)
        compiled = time.perf_counter()
        result = evaluate_scheme(scheme, layers, texts, reference)
        finished = time.perf_counter()
        result = replace(result, compile_seconds=compiled - started, run_seconds=finished - compiled)
        results[scheme] = result
        report(f"{label}: compiled in {compiled - started:.1f} s, {len(texts)} texts run in "
               f"{finished - compiled:.1f} s; mean layer SQNR {result.mean_sqnr_db:.2f} dB, "
               f"embedding cosine mean {result.mean_cosine:.4f}")
    return ModelAccuracy(results=results, texts=texts, tokens=tokens,
                         calibration_tokens=int(next(iter(calibration.values())).x.shape[0]),
                         quant=quant, rank=rank, alpha=alpha, svdmp=svdmp, alpha_grid=tuple(alpha_grid))
