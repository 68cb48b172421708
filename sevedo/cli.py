"""The ``sevedo`` command: generate Verilog, run the main job and evaluate SVD-MP."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import accuracy, area, board, build, perf, sweep

__all__ = ["main"]

DEFAULT_LAYER = "layer0.ffn_in"

# Goals of `sevedo svdmp` over the 36 MiniLM layers: SVD-MP must need at most
# this fraction of the all-wide multiplier slices, and lose less than this
# many dB of mean SQNR against the all-wide low-rank path.
GOAL_SLICE_RATIO = 0.60
GOAL_LOSS_DB = 0.2


def _add_quant_options(group):
    group.add_argument("--coarse-group", type=int, default=128, help="elements per FP16 coarse scale (default 128)")
    group.add_argument("--fine-group", type=int, default=16, help="elements per shift code (default 16)")
    group.add_argument("--shift-bits", type=int, default=2, help="width of a fine shift code in bits (default 2)")


def _add_config_options(parser):
    group = parser.add_argument_group("core configuration")
    group.add_argument("--rows", type=int, default=8, help="output channels computed in parallel (default 8)")
    group.add_argument("--lanes", type=int, default=16, help="INT4 elements of K per row per cycle (default 16)")
    _add_quant_options(group)


def _add_compiler_options(parser):
    parser.add_argument("--rank", type=int, default=32, help="rank of the low-rank path (default 32)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="smoothing strength in [0, 1]; a negative value disables smoothing (default 0.5)")


def _add_wide_count_option(parser):
    parser.add_argument("--wide-count", type=int,
                        help="SVD-MP: number of largest low-rank components that keep the full FP16 "
                             "significand (default 8)")


def _quant_config(args):
    from golden.hgq import HGQConfig
    return HGQConfig(coarse_group=args.coarse_group, fine_group=args.fine_group, shift_bits=args.shift_bits)


def _core_config(args):
    from hw.config import RMCConfig
    return RMCConfig(rows=args.rows, lanes=args.lanes, quant=_quant_config(args))


def _alpha(args):
    return None if args.alpha < 0 else args.alpha


def _svdmp_config(args):
    """Return the SVDMPConfig of the SVD-MP options; unset options keep the SVDMPConfig defaults."""
    from golden.lowrank import SVDMPConfig
    options = {}
    for name in ("narrow_bits", "slice_bits", "wide_count", "energy_fraction"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if "energy_fraction" in options:
        options.setdefault("wide_count", None)
    return SVDMPConfig(**options)


def _wide_components(layer):
    """Return how many components of a compiled layer keep the wide significand."""
    return int((layer.significand_bits == layer.config.svdmp.wide_bits).sum())


def _describe_policy(svdmp):
    if svdmp.wide_count is not None:
        wide = f"the {svdmp.wide_count} largest components"
    else:
        wide = (f"the fewest largest components that contain at least {100 * svdmp.energy_fraction:g}% "
                "of the squared singular values")
    return (f"{wide} with {svdmp.wide_bits}-bit significands, the rest with {svdmp.narrow_bits}-bit; "
            f"{svdmp.slice_bits}-bit multiplier slices")


def _command_verilog(args):
    from hw.rmc import generate_verilog
    from sim.yosys import check_verilog
    config = _core_config(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{config.name}.v"
    text = generate_verilog(config)
    path.write_text(text)
    cells = check_verilog(path, config.name)
    print(f"wrote {path}: top module {config.name}, {len(text.splitlines())} lines, "
          f"{cells} cells after Yosys read and proc")
    return 0


def _read_text(path):
    if path is None:
        from golden.minilm import DEFAULT_TEXT
        return DEFAULT_TEXT
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--text-file {path!r} cannot be read: {error.strerror}") from None


def _check_layer_options(args):
    from golden.minilm import LINEAR_NAMES
    if args.layer not in LINEAR_NAMES:
        raise ValueError(f"--layer must be one of the MiniLM linear layers ({LINEAR_NAMES[0]} ... "
                         f"{LINEAR_NAMES[-1]}), not {args.layer!r}")
    if args.tokens is not None and args.tokens < 1:
        raise ValueError(f"--tokens must be a positive integer, not {args.tokens}")


def _command_run(args):
    from golden.accuracy import SCHEMES, compare_schemes, sqnr_db
    from golden.compiler import CompilerConfig, compile_layer, run_layer
    from golden.formats import FP16
    from golden.minilm import capture_linear_layers
    from golden.opcost import layer_op_counts, slice_ratio
    from hw.hetero import CoreConfig
    from sim.core import core_name, simulate_core

    _check_layer_options(args)
    rmc = _core_config(args)
    svdmp = _svdmp_config(args)
    compiler = CompilerConfig(rank=args.rank, alpha=_alpha(args), quant=rmc.quant, svdmp=svdmp)
    started = time.perf_counter()

    print(f"MiniLM forward pass on {'the default text' if args.text_file is None else args.text_file} ...", flush=True)
    capture = capture_linear_layers(_read_text(args.text_file))[args.layer]
    x, weight, bias = capture.x, capture.weight, capture.bias
    if args.tokens is not None:
        x = x[:args.tokens]
    tokens, k = x.shape
    n = weight.shape[0]
    # The compiler checks the layer first, so that its messages name the layer's N and K.
    layer = compile_layer(weight, bias, x, compiler)
    config = CoreConfig(rmc=rmc, rank=args.rank, lvc_lanes=args.lvc_lanes, svdmp=svdmp, max_k=k, max_n=n)
    config.check_shape(k, n)
    print(f"layer {args.layer}: T={tokens} tokens, K={k}, N={n}; core {core_name(config)}")

    outputs = run_layer(layer, x)
    sqnr = compare_schemes(x, weight, rmc.quant, rank=args.rank, alpha=compiler.alpha, svdmp=svdmp)
    wide = _wide_components(layer)
    if args.rank:
        ratio = slice_ratio(layer_op_counts(layer, tokens), layer_op_counts(layer, tokens, all_wide=True))
        print(f"low-rank path: {wide} of {args.rank} components with {svdmp.wide_bits}-bit significands, "
              f"{args.rank - wide} with {svdmp.narrow_bits}-bit; {ratio:.3f} of the all-wide multiplier slices")
    else:
        ratio = None
        print("low-rank path: none (rank 0)")

    print(f"simulating the whole layer in {args.simulator} (quantizer, LVC and RMC): "
          f"{tokens} x {n} outputs ...", flush=True)
    x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    sim = simulate_core(config, layer, x_fp16, outputs.output, args.simulator, progress=True, quiet=True)

    # The schemes leave out the bias; the RTL row compares the layer output,
    # bias included, with the float64 layer output.
    reference = x.astype("float64") @ weight.astype("float64").T
    rtl_sqnr = sqnr_db(reference + bias, sim.y)
    print()
    print(f"{'scheme':<34} {'SQNR (dB)':>9}")
    for scheme in SCHEMES:
        print(f"{scheme:<34} {sqnr[scheme]:9.2f}")
    print(f"{'RTL layer output, bias included':<34} {rtl_sqnr:9.2f}")
    print()
    total = sim.y.size
    print(f"mismatches: {sim.mismatches} of {total} layer outputs differ from the golden model")
    macs = tokens * n * k
    pes = rmc.rows * rmc.lanes
    print(f"cycles: {sim.cycles} for {macs} INT4 MACs on {pes} PEs ({macs / (sim.cycles * pes):.1%} PE utilization)")
    print(f"PE array: {sim.busy} cycles busy, {sim.stall_input} stalled on input, "
          f"{sim.stall_output} stalled on output")
    elapsed = time.perf_counter() - started
    print(f"wall time: {sim.wall_seconds:.1f} s simulation, {elapsed:.1f} s in all")
    summary = {
        "layer": args.layer, "tokens": tokens, "k": k, "n": n, "core": core_name(config),
        "simulator": args.simulator, "sqnr_db": {**sqnr, "rtl": rtl_sqnr},
        "svdmp": {"wide_components": wide, "rank": args.rank,
                  "significand_bits": layer.significand_bits.tolist(), "slice_ratio": ratio},
        "outputs": total, "mismatches": sim.mismatches, "cycles": sim.cycles,
        "pe_utilization": macs / (sim.cycles * pes),
        "busy_cycles": sim.busy, "stall_input_cycles": sim.stall_input, "stall_output_cycles": sim.stall_output,
        "simulation_seconds": round(sim.wall_seconds, 3), "total_seconds": round(elapsed, 3),
    }
    if args.json:
        print(json.dumps(summary))
    return 0 if sim.mismatches == 0 else 1


def _compare_svdmp_layer(capture, quant, rank, alpha, svdmp):
    """Compile one MiniLM layer all-wide and with SVD-MP; return its table row and both op counts."""
    from golden.accuracy import compile_scheme, sqnr_db
    from golden.compiler import run_layer
    from golden.opcost import layer_op_counts, slice_ratio

    x, weight = capture.x, capture.weight
    tokens, k = x.shape
    reference = x.astype("float64") @ weight.astype("float64").T
    wide = compile_scheme("hgq + smooth + svd", x, weight, None, quant, rank, alpha)
    mixed = compile_scheme("hgq + smooth + svd-mp", x, weight, None, quant, rank, alpha, svdmp=svdmp)
    wide_counts = layer_op_counts(wide, tokens)
    mixed_counts = layer_op_counts(mixed, tokens)
    row = {
        "layer": capture.name, "k": k, "n": weight.shape[0], "wide_components": _wide_components(mixed),
        "slice_ratio": slice_ratio(mixed_counts, wide_counts),
        "sqnr_all_wide_db": sqnr_db(reference, run_layer(wide, x).output),
        "sqnr_svdmp_db": sqnr_db(reference, run_layer(mixed, x).output),
    }
    row["difference_db"] = row["sqnr_svdmp_db"] - row["sqnr_all_wide_db"]
    return row, wide_counts, mixed_counts


def _failed_svdmp_goals(ratio, loss):
    failed = []
    if ratio > GOAL_SLICE_RATIO:
        failed.append(f"slice ratio {ratio:.3f} is above the goal {GOAL_SLICE_RATIO:.2f}")
    if loss >= GOAL_LOSS_DB:
        failed.append(f"mean SQNR loss {loss:.3f} dB is not below the goal {GOAL_LOSS_DB} dB")
    return failed


def _command_svdmp(args):
    from golden.minilm import LINEAR_NAMES, capture_linear_layers
    from golden.opcost import slice_ratio

    if args.rank < 1:
        raise ValueError(f"--rank must be a positive integer, because SVD-MP needs a low-rank path, not {args.rank}")
    quant = _quant_config(args)
    svdmp = _svdmp_config(args)
    alpha = _alpha(args)
    started = time.perf_counter()

    print("MiniLM forward pass on the default text ...", flush=True)
    captures = capture_linear_layers()
    print(f"all-wide: every component with an 11-bit significand; SVD-MP: {_describe_policy(svdmp)}")
    print()
    print(f"{'':>7} {'layer':<16} {'K':>5} {'N':>5} {'wide':>7} {'slices':>6} "
          f"{'all-wide':>8} {'SVD-MP':>8} {'diff':>6}")
    print(f"{'':>7} {'':<16} {'':>5} {'':>5} {'':>7} {'ratio':>6} {'SQNR dB':>8} {'SQNR dB':>8} {'dB':>6}")

    rows, wide_counts, mixed_counts = [], [], []
    for index, name in enumerate(LINEAR_NAMES, start=1):
        row, wide, mixed = _compare_svdmp_layer(captures[name], quant, args.rank, alpha, svdmp)
        rows.append(row)
        wide_counts.append(wide)
        mixed_counts.append(mixed)
        # Each row is printed as soon as its layer is done, so the counter shows the progress.
        print(f"{f'[{index}/{len(LINEAR_NAMES)}]':>7} {name:<16} {row['k']:5d} {row['n']:5d} "
              f"{row['wide_components']:3d}/{args.rank:<3d} {row['slice_ratio']:6.3f} "
              f"{row['sqnr_all_wide_db']:8.2f} {row['sqnr_svdmp_db']:8.2f} {row['difference_db']:+6.2f}", flush=True)

    mean_wide = sum(row["sqnr_all_wide_db"] for row in rows) / len(rows)
    mean_mixed = sum(row["sqnr_svdmp_db"] for row in rows) / len(rows)
    loss = mean_wide - mean_mixed
    ratio = slice_ratio(mixed_counts, wide_counts)
    print()
    print(f"mean SQNR: all-wide {mean_wide:.3f} dB, SVD-MP {mean_mixed:.3f} dB, loss {loss:.3f} dB; "
          f"SVD-MP needs {ratio:.3f} of the all-wide multiplier slices")
    failed = _failed_svdmp_goals(ratio, loss)
    for message in failed:
        print(f"goal failed: {message}")
    if not failed:
        print(f"goals met: slice ratio at most {GOAL_SLICE_RATIO:.2f}, mean SQNR loss below {GOAL_LOSS_DB} dB")
    elapsed = time.perf_counter() - started
    print(f"wall time: {elapsed:.1f} s")

    if args.json:
        summary = {
            "svdmp": {"wide_bits": svdmp.wide_bits, "narrow_bits": svdmp.narrow_bits,
                      "slice_bits": svdmp.slice_bits, "wide_count": svdmp.wide_count,
                      "energy_fraction": svdmp.energy_fraction},
            "rank": args.rank, "alpha": alpha,
            "quant": {"coarse_group": quant.coarse_group, "fine_group": quant.fine_group,
                      "shift_bits": quant.shift_bits},
            "layers": rows, "mean_sqnr_all_wide_db": mean_wide, "mean_sqnr_svdmp_db": mean_mixed,
            "mean_loss_db": loss, "slice_ratio": ratio, "goals_met": not failed, "failed_goals": failed,
            "total_seconds": round(elapsed, 3),
        }
        print(json.dumps(summary))
    return 1 if failed else 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sevedo", description="SeVeDo accelerator generator: Verilog, golden model and simulation.")
    commands = parser.add_subparsers(dest="command", required=True)

    verilog = commands.add_parser("verilog", help="write the Verilog of a residual matrix core")
    _add_config_options(verilog)
    verilog.add_argument("--output", "-o", default="build/verilog", help="output folder (default build/verilog)")
    verilog.set_defaults(handler=_command_verilog)

    run = commands.add_parser(
        "run", help="compile a real MiniLM layer, simulate its residual path in RTL and check it bit for bit")
    _add_config_options(run)
    run.add_argument("--layer", default=DEFAULT_LAYER, help=f"MiniLM linear layer (default {DEFAULT_LAYER})")
    run.add_argument("--text-file", help="UTF-8 text to run MiniLM on (default: the embedded text)")
    run.add_argument("--tokens", type=int, help="use only the first N tokens (default: all)")
    run.add_argument("--simulator", choices=("verilator", "icarus"), default="verilator",
                     help="RTL simulator (default verilator)")
    _add_compiler_options(run)
    _add_wide_count_option(run)
    run.add_argument("--lvc-lanes", type=int, default=32,
                     help="FP lanes of the low-rank vector core; N must be a multiple of it (default 32)")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    run.set_defaults(handler=_command_run)

    svdmp = commands.add_parser(
        "svdmp", help="compare SVD-MP with the all-wide low-rank path on all 36 MiniLM layers (golden model)")
    _add_compiler_options(svdmp)
    precision = svdmp.add_argument_group("SVD-MP")
    policy = precision.add_mutually_exclusive_group()
    _add_wide_count_option(policy)
    policy.add_argument("--energy-fraction", type=float,
                        help="make wide the fewest largest components that contain at least this fraction "
                             "of the sum of squared singular values, in (0, 1]")
    precision.add_argument("--narrow-bits", type=int,
                           help="significand bits of a narrow component, hidden bit included (default 4)")
    precision.add_argument("--slice-bits", type=int,
                           help="significand bits per multiplier slice (default 4)")
    _add_quant_options(svdmp.add_argument_group("quantization"))
    svdmp.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    svdmp.set_defaults(handler=_command_svdmp)

    # Each of these modules registers its own subcommands and keeps its heavy
    # imports inside the handlers, so that `sevedo --help` stays fast.
    for module in (accuracy, area, board, build, perf, sweep):
        module.add_commands(commands)
    return parser


def main(argv=None):
    """Run the ``sevedo`` command with ``argv`` (default: the command line) and return its exit status."""
    if argv is None and "numpy" not in sys.modules:
        # The golden model's matrices are small. On a 2-core machine whose
        # cores other processes kept busy, `sevedo svdmp` took 80 s with
        # OpenBLAS threads and 6.5 s with one. A value set by the caller wins,
        # and the variable only takes effect before NumPy is first imported.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, RuntimeError) as error:
        print(f"sevedo {args.command}: error: {error}", file=sys.stderr)
        return 2
