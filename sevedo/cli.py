"""The ``sevedo`` command: generate Verilog and run the main job."""

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]

DEFAULT_LAYER = "layer0.ffn_in"


def _add_config_options(parser):
    group = parser.add_argument_group("core configuration")
    group.add_argument("--rows", type=int, default=8, help="output channels computed in parallel (default 8)")
    group.add_argument("--lanes", type=int, default=16, help="INT4 elements of K per row per cycle (default 16)")
    group.add_argument("--coarse-group", type=int, default=128, help="elements per FP16 coarse scale (default 128)")
    group.add_argument("--fine-group", type=int, default=16, help="elements per shift code (default 16)")
    group.add_argument("--shift-bits", type=int, default=2, help="width of a fine shift code (default 2)")


def _core_config(args):
    from golden.hgq import HGQConfig
    from hw.config import RMCConfig
    quant = HGQConfig(coarse_group=args.coarse_group, fine_group=args.fine_group, shift_bits=args.shift_bits)
    return RMCConfig(rows=args.rows, lanes=args.lanes, quant=quant)


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


def _command_run(args):
    from golden.accuracy import SCHEMES, compare_schemes, sqnr_db
    from golden.compiler import CompilerConfig, compile_layer, run_layer
    from golden.minilm import LINEAR_NAMES, capture_linear_layers
    from sim.rmc import simulate_rmc

    if args.layer not in LINEAR_NAMES:
        raise ValueError(f"--layer must be one of the MiniLM linear layers ({LINEAR_NAMES[0]} ... "
                         f"{LINEAR_NAMES[-1]}), not {args.layer!r}")
    if args.tokens is not None and args.tokens < 1:
        raise ValueError(f"--tokens must be a positive integer, not {args.tokens}")
    config = _core_config(args)
    compiler = CompilerConfig(rank=args.rank, alpha=None if args.alpha < 0 else args.alpha, quant=config.quant)
    started = time.perf_counter()

    print(f"MiniLM forward pass on {'the default text' if args.text_file is None else args.text_file} ...", flush=True)
    capture = capture_linear_layers(_read_text(args.text_file))[args.layer]
    x, weight, bias = capture.x, capture.weight, capture.bias
    if args.tokens is not None:
        x = x[:args.tokens]
    tokens, k = x.shape
    n = weight.shape[0]
    print(f"layer {args.layer}: T={tokens} tokens, K={k}, N={n}; core {config.name}")

    sqnr = compare_schemes(x, weight, config.quant, rank=args.rank, alpha=compiler.alpha or 0.5)
    layer = compile_layer(weight, bias, x, compiler)
    outputs = run_layer(layer, x)

    print(f"simulating the residual path in {args.simulator}: {tokens} x {n} outputs ...", flush=True)
    sim = simulate_rmc(config, outputs.activations, layer.residual, args.simulator, progress=True, quiet=True)

    reference = x.astype("float64") @ weight.astype("float64").T
    rtl_output = outputs.lowrank + sim.y
    rtl_sqnr = sqnr_db(reference, rtl_output)
    print()
    print(f"{'scheme':<34} {'SQNR (dB)':>9}")
    for scheme in SCHEMES:
        print(f"{scheme:<34} {sqnr[scheme]:9.2f}")
    print(f"{'compiled layer, RTL residual':<34} {rtl_sqnr:9.2f}")
    print()
    total = sim.y.size
    print(f"mismatches: {sim.mismatches} of {total} residual outputs differ from the golden model")
    macs = tokens * n * k
    print(f"cycles: {sim.cycles} for {macs} INT4 MACs on {config.rows * config.lanes} PEs "
          f"({macs / (sim.cycles * config.rows * config.lanes):.1%} PE utilization)")
    elapsed = time.perf_counter() - started
    print(f"wall time: {sim.wall_seconds:.1f} s simulation, {elapsed:.1f} s in all")
    summary = {
        "layer": args.layer, "tokens": tokens, "k": k, "n": n, "core": config.name,
        "simulator": args.simulator, "sqnr_db": {**sqnr, "rtl": rtl_sqnr},
        "outputs": total, "mismatches": sim.mismatches, "cycles": sim.cycles,
        "simulation_seconds": round(sim.wall_seconds, 3), "total_seconds": round(elapsed, 3),
    }
    if args.json:
        print(json.dumps(summary))
    return 0 if sim.mismatches == 0 else 1


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
    run.add_argument("--rank", type=int, default=32, help="rank of the low-rank path (default 32)")
    run.add_argument("--alpha", type=float, default=0.5,
                     help="smoothing strength in [0, 1]; a negative value disables smoothing (default 0.5)")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    run.set_defaults(handler=_command_run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, RuntimeError) as error:
        print(f"sevedo {args.command}: error: {error}", file=sys.stderr)
        return 2
