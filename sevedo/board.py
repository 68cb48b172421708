"""Subcommands of `sevedo`: board."""

import json
import os
import sys
import time

__all__ = ["add_commands"]

# `board run --simulate` runs the RTL at 4 clock cycles per UART bit, the
# fewest that HostConfig accepts, so that the simulated line is fast.
SIMULATED_CLOCK_HZ = 12_000_000
SIMULATED_BAUD = 3_000_000
# The simulated default tile: the first tokens and output channels of the layer.
SIMULATED_TOKENS = 3
SIMULATED_OUTPUTS = 4
# At most this many mismatches are printed, one per line, and the rest are only counted.
MISMATCH_LINES = 10
SIMULATE_ONLY = ("rows", "lanes", "coarse_group", "fine_group", "shift_bits")


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    from .cli import DEFAULT_LAYER

    board = commands.add_parser("board", help="run tiles on the accelerator behind its UART host interface")
    actions = board.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run", help="send a compiled MiniLM layer's residual path through the host interface and check it bit "
                    "for bit",
        description="Compile a MiniLM layer, send its residual path tile by tile to the device (a serial port, "
                    "or the RTL in the Amaranth simulator), and compare every result with the golden model. "
                    "Exits with 1 when a result differs or the device fails, and with 2 on invalid options.")
    device = run.add_mutually_exclusive_group(required=True)
    device.add_argument("--port", help="serial port of the board, such as /dev/ttyUSB1")
    device.add_argument("--simulate", action="store_true",
                        help="run the host interface's RTL in the Amaranth simulator instead of a board")
    run.add_argument("--baud", type=int, default=115_200,
                     help="UART bit rate of the serial port in bit/s; it must match the design (default 115200)")
    run.add_argument("--latency", type=float, default=0.1,
                     help="seconds that a reply may arrive after its line time, for the OS and the USB adapter "
                          "(default 0.1)")
    run.add_argument("--layer", default=DEFAULT_LAYER, help=f"MiniLM linear layer (default {DEFAULT_LAYER})")
    run.add_argument("--text-file", help="UTF-8 text to run MiniLM on (default: the embedded text)")
    run.add_argument("--tokens", type=int,
                     help=f"use only the first N tokens (default: all with --port, {SIMULATED_TOKENS} with "
                          "--simulate)")
    run.add_argument("--outputs", type=int,
                     help=f"use only the first N output channels (default: all with --port, {SIMULATED_OUTPUTS} "
                          "with --simulate)")
    run.add_argument("--rank", type=int, default=32, help="rank of the low-rank path (default 32)")
    run.add_argument("--alpha", type=float, default=0.5,
                     help="smoothing strength in [0, 1]; a negative value disables smoothing (default 0.5)")
    core = run.add_argument_group("simulated device (--simulate only; a board reports its own)")
    core.add_argument("--rows", type=int, help="output channels computed in parallel (default 2)")
    core.add_argument("--lanes", type=int, help="INT4 elements of K per row per cycle (default 16)")
    core.add_argument("--coarse-group", type=int, help="elements per FP16 coarse scale (default 128)")
    core.add_argument("--fine-group", type=int, help="elements per shift code (default 16)")
    core.add_argument("--shift-bits", type=int, help="width of a fine shift code in bits (default 2)")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    run.set_defaults(handler=_command_run)


def _simulated_config(args):
    """Return the HostConfig of `--simulate`: HostConfig's defaults with the core options applied."""
    from golden.hgq import HGQConfig
    from hw.config import RMCConfig
    from hw.host import HostConfig

    default = HostConfig().rmc

    def option(name, fallback):
        return fallback if getattr(args, name) is None else getattr(args, name)

    quant = HGQConfig(coarse_group=option("coarse_group", default.quant.coarse_group),
                      fine_group=option("fine_group", default.quant.fine_group),
                      shift_bits=option("shift_bits", default.quant.shift_bits))
    rmc = RMCConfig(rows=option("rows", default.rows), lanes=option("lanes", default.lanes), quant=quant)
    return HostConfig(rmc=rmc, clock_hz=SIMULATED_CLOCK_HZ, baud=SIMULATED_BAUD)


def _check_options(args):
    from .cli import _check_layer_options

    _check_layer_options(args)
    if args.outputs is not None and args.outputs < 1:
        raise ValueError(f"--outputs must be a positive integer, not {args.outputs}")
    if args.port is not None:
        for name in SIMULATE_ONLY:
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies only with --simulate; a board reports "
                                 "its own configuration")
    if args.baud < 1:
        raise ValueError(f"--baud must be a positive integer, not {args.baud}")
    if not args.latency > 0:
        raise ValueError(f"--latency must be a positive number of seconds, not {args.latency}")


def _open_transport(args):
    from .driver import SerialTransport

    if args.simulate:
        from sim.host import SimulatedTransport
        config = _simulated_config(args)
        print(f"simulating the host interface {config.name} in the Amaranth simulator, "
              f"{config.divisor} clock cycles per UART bit", flush=True)
        return SimulatedTransport(config)
    try:
        return SerialTransport(args.port, args.baud, latency=args.latency)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ValueError(f"--port {args.port!r} cannot be opened: {reason}") from None


def _print_mismatches(got, expected):
    """Print the first mismatching results and return how many there are."""
    import numpy as np

    wrong = np.argwhere(got != expected)
    for token, output in wrong[:MISMATCH_LINES]:
        print(f"mismatch: token {token}, output {output}: device 0x{got[token, output]:08x}, "
              f"golden 0x{expected[token, output]:08x}")
    if len(wrong) > MISMATCH_LINES:
        print(f"... and {len(wrong) - MISMATCH_LINES} more mismatches")
    return len(wrong)


def _command_run(args):
    # A device error exits with 1, as a mismatch does, and invalid options exit with 2.
    from golden.protocol import ProtocolError

    try:
        _check_options(args)
        return _run(args)
    except (ProtocolError, TimeoutError) as error:
        print(f"sevedo board run: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as error:
        print(f"sevedo board run: error: {error}", file=sys.stderr)
        return 2


def _select_tile(args, config):
    """Compile the layer with the device's quantization; return the tile's xq, wq and the layer's (N, K)."""
    from golden.compiler import CompilerConfig, compile_layer, run_layer
    from golden.minilm import capture_linear_layers

    from .cli import _alpha, _read_text

    print(f"MiniLM forward pass on {'the default text' if args.text_file is None else args.text_file} ...",
          flush=True)
    capture = capture_linear_layers(_read_text(args.text_file))[args.layer]
    compiler = CompilerConfig(rank=args.rank, alpha=_alpha(args), quant=config.rmc.quant)
    layer = compile_layer(capture.weight, capture.bias, capture.x, compiler)
    if args.simulate:
        tokens, outputs = SIMULATED_TOKENS, SIMULATED_OUTPUTS
    else:
        tokens, outputs = capture.x.shape[0], layer.shape[0]
    tokens = min(args.tokens or tokens, capture.x.shape[0])
    outputs = min(args.outputs or outputs, layer.shape[0])
    xq = run_layer(layer, capture.x[:tokens]).activations
    wq = layer.residual.select_rows(slice(0, outputs))
    return xq, wq, layer.shape


def _run(args):
    from tqdm import tqdm

    from golden.formats import FP32
    from golden.protocol import ProtocolError
    from golden.residual import residual_matmul

    from .driver import HostDriver

    started = time.perf_counter()
    transport = _open_transport(args)
    try:
        driver = HostDriver(transport)
        try:
            info = driver.ping()
        except (ProtocolError, TimeoutError) as error:
            if args.simulate:
                raise
            raise ProtocolError(f"{error}; check that the board is programmed and that --baud {args.baud} is "
                                "its design's bit rate") from error
        config = driver.config
        print(f"device: {config.name}; rows {info.rows}, lanes {info.lanes}, HGQ {info.coarse_group}/"
              f"{info.fine_group}/{info.shift_bits}; buffers of {info.weight_words} weight, "
              f"{info.activation_words} activation and {info.result_words} result words; "
              f"{info.clock_hz / 1e6:g} MHz, {info.baud} baud")
        xq, wq, (n, k) = _select_tile(args, config)
        tokens, outputs = xq.shape[0], wq.shape[0]
        print(f"layer {args.layer}: residual path of T={tokens} tokens, K={k}, {outputs} of N={n} outputs",
              flush=True)
        with tqdm(desc="tiles", unit="run", leave=False, disable=None) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            run = driver.run_tile(xq, wq, progress=progress)
    finally:
        transport.close()

    mismatches = _print_mismatches(run.bits, FP32.to_bits(residual_matmul(xq, wq)))
    total = run.bits.size
    print(f"mismatches: {mismatches} of {total} residual outputs differ from the golden model")
    print(f"device counters over {run.runs} runs: {run.cycles} cycles, {run.beats} beats, "
          f"{run.stalls} stall cycles")
    elapsed = time.perf_counter() - started
    macs = tokens * outputs * k
    # Padded rows of the last row tile count as idle PEs. A device whose
    # counters stay at 0 gets 0.
    pe_cycles = run.cycles * config.rmc.rows * config.rmc.lanes
    utilization = macs / pe_cycles if pe_cycles else 0.0
    simulated = f", {transport.seconds * 1e3:.3f} ms simulated" if args.simulate else ""
    print(f"board run: {total - mismatches} of {total} outputs bit-exact; {macs} INT4 MACs in {run.cycles} cycles "
          f"({utilization:.1%} PE utilization){simulated}; {elapsed:.1f} s wall time")
    if args.json:
        summary = {
            "layer": args.layer, "tokens": tokens, "k": k, "outputs": outputs, "device": config.name,
            "simulated": args.simulate, "runs": run.runs, "results": total, "mismatches": mismatches,
            "cycles": run.cycles, "beats": run.beats, "stall_cycles": run.stalls, "pe_utilization": utilization,
            "total_seconds": round(elapsed, 3),
        }
        if args.simulate:
            summary["simulated_seconds"] = transport.seconds
        print(json.dumps(summary))
    return 0 if mismatches == 0 else 1
