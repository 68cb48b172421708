"""Subcommands of `sevedo`: accuracy."""

import json
import time
from pathlib import Path

__all__ = ["add_commands"]

# Column labels of the per-layer table with --per-layer, one per scheme.
SHORT_NAMES = {
    "int4 per-tensor": "tensor",
    "int4 group-64 fp16": "g64",
    "int4 group-64 fp16 + smooth + svd": "g64+svd",
    "mxint4 block-32": "mx32",
    "int4 fine-group fp16": "gf",
    "hgq": "hgq",
    "hgq + svd": "hgq+svd",
    "hgq + searched smooth + svd": "search",
    "hgq + smooth + svd-mp": "default",
}


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    from .cli import _add_compiler_options, _add_quant_options, _add_wide_count_option

    parser = commands.add_parser(
        "accuracy", help="compare the quantization schemes on the whole MiniLM model, or on one imported layer",
        description="Replace all 36 linear layers of MiniLM by each quantization scheme in the golden model, "
                    "run evaluation texts, and report per-layer output SQNR, sentence-embedding cosine and "
                    "residual-path FP multiplies. Exits with 1 when a goal of the default scheme is not met. "
                    "With --safetensors, compare the schemes on one linear layer read from a file instead.")
    _add_compiler_options(parser)
    _add_wide_count_option(parser)
    _add_quant_options(parser.add_argument_group("quantization"))
    parser.add_argument("--texts", help="UTF-8 file of evaluation texts, one per line (default: the 12 embedded "
                                        "sentences)")
    parser.add_argument("--per-layer", action="store_true",
                        help="print the per-layer SQNR of every scheme, not only of the default scheme")
    imported = parser.add_argument_group("one imported layer")
    imported.add_argument("--safetensors", help="safetensors file that contains the layer")
    imported.add_argument("--weight", help="name of the weight tensor (N x K) in the file")
    imported.add_argument("--bias", help="name of the bias tensor (N) in the file (default: no bias)")
    imported.add_argument("--activations",
                          help=".npy file of the layer's input activations (T x K); without it, MiniLM "
                               "activations of the same K stand in")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.set_defaults(handler=_command_accuracy)


def _options(args):
    from .cli import _alpha, _quant_config, _svdmp_config
    return {"quant": _quant_config(args), "rank": args.rank, "alpha": _alpha(args), "svdmp": _svdmp_config(args)}


def _check_arguments(args):
    layer_only = {"--weight": args.weight, "--bias": args.bias, "--activations": args.activations}
    if args.safetensors is None:
        flags = [flag for flag, value in layer_only.items() if value is not None]
        if flags:
            raise ValueError(f"{flags[0]} needs --safetensors")
    else:
        if args.weight is None:
            raise ValueError("--safetensors needs --weight, the name of the weight tensor")
        if args.texts is not None:
            raise ValueError("--texts applies to the whole model, not to a layer from --safetensors")
    if args.rank < 0:
        raise ValueError(f"--rank must be a non-negative integer, not {args.rank}")


def _read_texts(path):
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"--texts {path!r} cannot be read: {error.strerror}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"--texts {path!r} contains no text")
    return texts


def _command_accuracy(args):
    _check_arguments(args)
    started = time.perf_counter()
    if args.safetensors is not None:
        return _command_layer(args, started)
    return _command_model(args, started)


def _describe_config(options):
    from golden.lowrank import SVDMPConfig
    quant, svdmp = options["quant"], options["svdmp"]
    alpha = "off" if options["alpha"] is None else f"{options['alpha']:g}"
    if svdmp == SVDMPConfig.all_wide():
        widths = "every component with an FP16 significand"
    elif svdmp.wide_count is not None:
        widths = (f"the {svdmp.wide_count} largest components with {svdmp.wide_bits}-bit significands, "
                  f"the rest {svdmp.narrow_bits}-bit")
    else:
        widths = (f"components with {svdmp.energy_fraction:g} of the energy with {svdmp.wide_bits}-bit "
                  f"significands, the rest {svdmp.narrow_bits}-bit")
    return (f"rank {options['rank']}, alpha {alpha}, Gc {quant.coarse_group}, Gf {quant.fine_group}, "
            f"{quant.shift_bits} shift bits, SVD-MP {widths}")


def _print_scheme_table(result):
    print(f"{'':<34} {'layer SQNR (dB)':>15} {'embedding cosine':>17} {'FP mul':>7} {'LR slices':>10}")
    print(f"{'scheme':<34} {'mean':>7} {'min':>7} {'mean':>8} {'min':>8} {'x g64':>7} {'M/token':>10}")
    for name, scheme in result.results.items():
        ratio = result.fp_multiply_ratio(name)
        ratio_text = "-" if ratio is None else f"{ratio:.3f}"
        print(f"{name:<34} {scheme.mean_sqnr_db:7.2f} {scheme.min_sqnr_db:7.2f} {scheme.mean_cosine:8.4f} "
              f"{scheme.min_cosine:8.4f} {ratio_text:>7} {scheme.counts.lowrank_slices / 1e6:10.2f}")


def _print_layer_table(result, schemes, shapes):
    from golden.minilm import LINEAR_NAMES
    columns = "".join(f" {SHORT_NAMES[name]:>8}" for name in schemes)
    print(f"{'layer':<16} {'K':>5} {'N':>5}{columns}")
    for name in LINEAR_NAMES:
        n, k = shapes[name]
        values = "".join(f" {result.results[scheme].layer_sqnr_db[name]:8.2f}" for scheme in schemes)
        print(f"{name:<16} {k:5d} {n:5d}{values}")
    means = "".join(f" {result.results[scheme].mean_sqnr_db:8.2f}" for scheme in schemes)
    print(f"{'mean':<28}{means}")


def _command_model(args, started):
    from golden.accuracy import DEFAULT_SCHEME, MODEL_SCHEMES
    from golden.minilm import capture_linear_layers
    from golden.model_accuracy import EVALUATION_TEXTS, evaluate_model

    options = _options(args)
    texts = EVALUATION_TEXTS if args.texts is None else _read_texts(args.texts)
    print(f"MiniLM, all 36 linear layers quantized; calibration on the default text, evaluation on "
          f"{len(texts)} texts; {_describe_config(options)}", flush=True)
    result = evaluate_model(MODEL_SCHEMES, texts, progress=lambda line: print(line, flush=True), **options)
    shapes = {name: capture.weight.shape for name, capture in capture_linear_layers().items()}

    print()
    print(f"{len(result.texts)} texts, {sum(result.tokens)} tokens. Layer SQNR: X W^T against float64; "
          "embedding cosine: against the float32 model;")
    print("FP mul: residual-path FP multiplies over those of int4 group-64 fp16; LR slices: low-rank multiplier "
          "slices, millions per token")
    _print_scheme_table(result)
    print()
    per_layer = MODEL_SCHEMES if args.per_layer else (DEFAULT_SCHEME,)
    print(f"per-layer SQNR (dB){'' if args.per_layer else ' of ' + DEFAULT_SCHEME}:")
    _print_layer_table(result, per_layer, shapes)
    if args.per_layer:
        print("columns: " + "; ".join(f"{SHORT_NAMES[name]} = {name}" for name in MODEL_SCHEMES))
    print()

    goals = result.goals()
    print(f"goals of {DEFAULT_SCHEME}:")
    for goal in goals:
        print(f"  {goal.describe()}")
    default = result.results[DEFAULT_SCHEME]
    elapsed = time.perf_counter() - started
    met = sum(goal.met for goal in goals)
    print(f"summary: {DEFAULT_SCHEME} on {len(result.texts)} texts: mean layer SQNR {default.mean_sqnr_db:.2f} dB, "
          f"embedding cosine mean {default.mean_cosine:.4f} (min {default.min_cosine:.4f}), "
          f"{result.fp_multiply_ratio(DEFAULT_SCHEME):.3f} of the group-64 FP multiplies; "
          f"{met} of {len(goals)} goals met; {elapsed:.1f} s")
    if args.json:
        print(json.dumps({**result.summary(), "total_seconds": round(elapsed, 3)}))
    return 0 if met == len(goals) else 1


def _command_layer(args, started):
    from golden.accuracy import (
        DEFAULT_SCHEME,
        MODEL_SCHEMES,
        REFERENCE_SCHEME,
        compare_layer_schemes,
    )
    from golden.importer import import_layer

    options = _options(args)
    try:
        layer = import_layer(args.safetensors, args.weight, args.bias, args.activations, options["quant"])
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    n, k = layer.weight.shape
    tokens = layer.x.shape[0]
    bias = f"bias {args.bias!r}" if args.bias is not None else "no bias"
    print(f"layer {args.weight!r} from {args.safetensors}: N={n}, K={k}, {bias}; {_describe_config(options)}")
    if layer.stand_in:
        print(f"activations: STAND-IN, {layer.activations_source} ({tokens} tokens), not the layer's own inputs; "
              "pass --activations for real figures")
    else:
        print(f"activations: {layer.activations_source} ({tokens} tokens)")
    print("calibration and evaluation on the same activations", flush=True)

    rows = {}
    for index, scheme in enumerate(MODEL_SCHEMES, start=1):
        rows.update(compare_layer_schemes(layer.x, layer.weight, layer.bias, schemes=(scheme,), **options))
        print(f"[{index}/{len(MODEL_SCHEMES)}] {scheme}: SQNR {rows[scheme]['sqnr_db']:.2f} dB", flush=True)

    reference = rows[REFERENCE_SCHEME]["fp_multiplies"]
    print()
    print(f"{'scheme':<34} {'SQNR dB':>8} {'alpha':>6} {'FP mul x g64':>13} {'LR slices/token':>16}")
    for scheme, row in rows.items():
        row["fp_multiply_ratio"] = row["fp_multiplies"] / reference
        alpha = "-" if row["alpha"] is None else f"{row['alpha']:g}"
        print(f"{scheme:<34} {row['sqnr_db']:8.2f} {alpha:>6} {row['fp_multiply_ratio']:13.3f} "
              f"{row['lowrank_slices']:16d}")
    elapsed = time.perf_counter() - started
    stand_in = " (stand-in activations)" if layer.stand_in else ""
    print(f"summary: {args.weight} with {DEFAULT_SCHEME}: SQNR {rows[DEFAULT_SCHEME]['sqnr_db']:.2f} dB{stand_in}, "
          f"int4 group-64 fp16 {rows[REFERENCE_SCHEME]['sqnr_db']:.2f} dB; {elapsed:.1f} s")
    if args.json:
        summary = {
            "safetensors": str(args.safetensors), "weight": args.weight, "bias": args.bias, "n": n, "k": k,
            "tokens": tokens, "activations": layer.activations_source, "stand_in": layer.stand_in,
            "rank": options["rank"], "alpha": options["alpha"], "schemes": rows, "total_seconds": round(elapsed, 3),
        }
        print(json.dumps(summary))
    return 0
