"""Benchmarks of the golden model, the Verilog generator and the simulators, measured side by side.

``python -m sim.bench`` (``make bench``) runs each step in its own child
process, so that every step gets its own peak memory (the largest resident
set of the step and the tools it starts). It prints each figure with its
ratio and goal, writes them to ``build/bench/bench.json`` and renders
``docs/benchmarks.md``.

Steps:

``golden``
    The bit-exact golden residual product and the whole bit-exact layer
    against a float32 NumPy matrix product of the same shape.
``verilog``
    Verilog generation of the heterogeneous core sized for layer0.ffn_in.
``simulators``
    The same core test (layer0.query, 2 tokens) under Verilator and under
    Icarus, in simulated cycles per second of wall time.
``layer``
    The whole layer0.ffn_in of the default text in Verilator, checked bit
    for bit: build time and simulation time.

The figures depend on the machine and on its load. Compare ratios from one
run, not figures from different runs.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["main", "GOALS"]

STEPS = ("golden", "verilog", "simulators", "layer")

# Goals: (figure key, comparison, bound, what it means).
GOALS = {
    "residual_over_matmul": ("<=", 2.0, "bit-exact residual product at most 2x a float32 matmul"),
    "verilator_over_icarus": (">=", 10.0, "Verilator at least 10x the cycles per second of Icarus"),
    "layer_simulation_seconds": ("<", 60.0, "whole ffn_in layer in Verilator, bit-exact, under 60 s"),
}


def _best_seconds(function, repeat):
    """Return the shortest of ``repeat`` timed calls of ``function``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _compiled_layer(name, tokens=None):
    from golden.compiler import CompilerConfig, compile_layer
    from golden.minilm import capture_linear_layers

    capture = capture_linear_layers()[name]
    x = capture.x if tokens is None else capture.x[:tokens]
    return compile_layer(capture.weight, capture.bias, capture.x, CompilerConfig()), x


def _step_golden(quick):
    import numpy as np

    from golden.compiler import run_layer
    from golden.hgq import quantize_hgq
    from golden.residual import residual_matmul

    repeat = 5 if quick else 30
    figures = {}
    for name in ("layer0.ffn_in", "layer0.ffn_out"):
        layer, x = _compiled_layer(name)
        xq = quantize_hgq(x / layer.smoothing, layer.residual.config)
        x32, w32 = x.astype(np.float32), layer.residual.dequantize().astype(np.float32)
        matmul = _best_seconds(lambda: x32 @ w32.T, repeat)
        residual = _best_seconds(lambda: residual_matmul(xq, layer.residual), repeat)
        whole = _best_seconds(lambda: run_layer(layer, x), repeat)
        tokens, k = x.shape
        figures[name] = {
            "shape": {"tokens": tokens, "k": k, "n": layer.shape[0]},
            "matmul_float32_ms": matmul * 1e3, "residual_ms": residual * 1e3, "layer_ms": whole * 1e3,
            "residual_over_matmul": residual / matmul, "layer_over_matmul": whole / matmul,
        }
    return {"layers": figures,
            "residual_over_matmul": max(f["residual_over_matmul"] for f in figures.values()),
            "layer_over_matmul": max(f["layer_over_matmul"] for f in figures.values())}


def _core_config(layer, k, n):
    from hw.hetero import CoreConfig

    return CoreConfig(rank=layer.config.rank, max_k=k, max_n=n)


def _step_verilog(quick):
    from sim.core import _core_verilog, core_name

    name = "layer0.query" if quick else "layer0.ffn_in"
    layer, _ = _compiled_layer(name, tokens=1)
    n, k = layer.shape
    config = _core_config(layer, k, n)
    start = time.perf_counter()
    text = _core_verilog(config)
    return {"layer": name, "core": core_name(config), "seconds": time.perf_counter() - start,
            "verilog_bytes": len(text.encode())}


def _simulate(name, tokens, simulator, build_root):
    from golden.compiler import run_layer
    from golden.formats import FP16
    from sim.core import _core_verilog, core_name, simulate_core
    from sim.runner import build_design

    layer, x = _compiled_layer(name, tokens)
    n, k = layer.shape
    config = _core_config(layer, k, n)
    expected = run_layer(layer, x).output
    x_fp16 = (x / layer.smoothing).astype(FP16.dtype)
    start = time.perf_counter()
    build_design(_core_verilog(config), core_name(config), simulator,
                 Path(build_root) / f"{core_name(config)}-{simulator}")
    build = time.perf_counter() - start
    run = simulate_core(config, layer, x_fp16, expected, simulator, build_root=build_root, quiet=True)
    return {"layer": name, "tokens": x.shape[0], "simulator": simulator, "build_seconds": build,
            "simulation_seconds": run.wall_seconds, "cycles": run.cycles,
            "cycles_per_second": run.cycles / run.wall_seconds, "mismatches": run.mismatches,
            "outputs": int(run.y.size)}


def _step_simulators(quick, build_root):
    tokens = 1 if quick else 2
    return {simulator: _simulate("layer0.query", tokens, simulator, build_root)
            for simulator in ("verilator", "icarus")}


def _step_layer(quick, build_root):
    return _simulate("layer0.query" if quick else "layer0.ffn_in", 1 if quick else None, "verilator", build_root)


def _run_step(step, quick, build_root):
    if step == "golden":
        return _step_golden(quick)
    if step == "verilog":
        return _step_verilog(quick)
    if step == "simulators":
        return _step_simulators(quick, build_root)
    return _step_layer(quick, build_root)


def _child(step, quick, build_root, result_path):
    """Run one step in a child process; return (figures, wall seconds, peak resident set in MiB)."""
    command = [sys.executable, "-m", "sim.bench", "--child", step, "--build-root", str(build_root),
               "--result", str(result_path)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    process = subprocess.Popen(command)
    # wait4 reports the step's peak resident set, counting the tools it started and waited for.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"benchmark step {step!r} failed with exit status {process.returncode}")
    return json.loads(Path(result_path).read_text()), wall, usage.ru_maxrss / 1024


def _goal_line(key, value):
    comparison, bound, meaning = GOALS[key]
    met = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[comparison]
    return met, f"goal {comparison} {bound:g}: {'met' if met else 'NOT met'} ({meaning})"


def _summary(results):
    """Return ``{figure: value}`` of the figures that have goals, from whichever steps ran."""
    figures = {}
    if "golden" in results:
        figures["residual_over_matmul"] = results["golden"]["figures"]["residual_over_matmul"]
    if "simulators" in results:
        speeds = results["simulators"]["figures"]
        figures["verilator_over_icarus"] = (speeds["verilator"]["cycles_per_second"]
                                            / speeds["icarus"]["cycles_per_second"])
    if "layer" in results:
        figures["layer_simulation_seconds"] = results["layer"]["figures"]["simulation_seconds"]
    return figures


def _print_step(step, result):
    figures = result["figures"]
    print(f"  peak memory {result['peak_mib']:.0f} MiB, {result['wall_seconds']:.1f} s in all")
    if step == "golden":
        for name, layer in figures["layers"].items():
            shape = layer["shape"]
            print(f"  {name} (T={shape['tokens']}, K={shape['k']}, N={shape['n']}): float32 matmul "
                  f"{layer['matmul_float32_ms']:.2f} ms, bit-exact residual {layer['residual_ms']:.2f} ms "
                  f"({layer['residual_over_matmul']:.2f}x), bit-exact layer {layer['layer_ms']:.2f} ms "
                  f"({layer['layer_over_matmul']:.2f}x)")
    elif step == "verilog":
        print(f"  {figures['core']}: {figures['seconds']:.1f} s, {figures['verilog_bytes'] / 1e6:.1f} MB of Verilog")
    elif step == "simulators":
        for simulator, run in figures.items():
            print(f"  {simulator}: {run['cycles']} cycles in {run['simulation_seconds']:.1f} s = "
                  f"{run['cycles_per_second']:.0f} cycles/s (build {run['build_seconds']:.1f} s, "
                  f"{run['mismatches']} mismatches)")
    else:
        print(f"  {figures['layer']} ({figures['tokens']} tokens, {figures['outputs']} outputs): "
              f"simulation {figures['simulation_seconds']:.1f} s, build {figures['build_seconds']:.1f} s, "
              f"{figures['cycles']} cycles, {figures['mismatches']} mismatches")


def _markdown(report):
    """Return the text of docs/benchmarks.md for ``report``."""
    results = report["steps"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m sim.bench`); do not edit by hand. All figures come from one",
        "run on one machine, so the ratios compare like with like. Absolute times depend on the",
        "machine and its load.",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}, "
        f"Python {report['machine']['python']}",
        f"- Mode: {'quick (small shapes)' if report['quick'] else 'full'}",
        "",
        "## Goals",
        "",
        "| Figure | Value | Goal | Met |",
        "|---|---|---|---|",
    ]
    for key, value in report["summary"].items():
        comparison, bound, meaning = GOALS[key]
        met, _ = _goal_line(key, value)
        lines.append(f"| {meaning} | {value:.2f} | {comparison} {bound:g} | {'yes' if met else 'no'} |")
    lines += ["", "## Steps", "", "| Step | Wall time (s) | Peak memory (MiB) |", "|---|---|---|"]
    for step, result in results.items():
        lines.append(f"| {step} | {result['wall_seconds']:.1f} | {result['peak_mib']:.0f} |")
    if "golden" in results:
        lines += ["", "## Golden model against a float32 matmul", "",
                  "| Layer | T x K x N | float32 matmul (ms) | bit-exact residual (ms) | ratio "
                  "| bit-exact layer (ms) | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for name, layer in results["golden"]["figures"]["layers"].items():
            shape = layer["shape"]
            lines.append(f"| {name} | {shape['tokens']} x {shape['k']} x {shape['n']} "
                         f"| {layer['matmul_float32_ms']:.2f} | {layer['residual_ms']:.2f} "
                         f"| {layer['residual_over_matmul']:.2f} | {layer['layer_ms']:.2f} "
                         f"| {layer['layer_over_matmul']:.2f} |")
        lines += ["",
                  "The residual product runs on BLAS: every partial sum of a coarse group of pre-shifted",
                  "codes stays below 2**24, so a float32 product is exact. The whole layer also runs the",
                  "low-rank path, whose FP32 sums must round after every term in the order of the LVC",
                  "lanes; that sequential order cannot use BLAS, so the layer takes longer than the residual",
                  "product alone."]
    if "simulators" in results:
        lines += ["", "## Simulators", "", "| Simulator | Cycles | Simulation (s) | Cycles/s | Build (s) |",
                  "|---|---|---|---|---|"]
        for simulator, run in results["simulators"]["figures"].items():
            lines.append(f"| {simulator} | {run['cycles']} | {run['simulation_seconds']:.1f} "
                         f"| {run['cycles_per_second']:.0f} | {run['build_seconds']:.1f} |")
    if "verilog" in results:
        figures = results["verilog"]["figures"]
        lines += ["", "## Verilog generation", "",
                  f"`{figures['core']}`: {figures['seconds']:.1f} s, {figures['verilog_bytes'] / 1e6:.1f} MB."]
    if "layer" in results:
        figures = results["layer"]["figures"]
        lines += ["", "## Whole layer in Verilator", "",
                  f"{figures['layer']}, {figures['tokens']} tokens: {figures['mismatches']} of "
                  f"{figures['outputs']} outputs differ from the golden model; {figures['cycles']} cycles "
                  f"simulated in {figures['simulation_seconds']:.1f} s after a {figures['build_seconds']:.1f} s "
                  "build."]
    return "\n".join(lines) + "\n"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated steps to run, from {', '.join(STEPS)} (default: all)")
    parser.add_argument("--output", default="build/bench", help="folder for bench.json and builds")
    parser.add_argument("--doc", default="docs/benchmarks.md", help="Markdown page to write; '' for none")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a check of the harness")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--build-root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    unknown = [step for step in steps if step not in STEPS]
    if unknown or not steps:
        parser.error(f"--steps must name steps from {', '.join(STEPS)}, not {args.steps!r}")
    args.steps = steps
    return args


def main(argv=None):
    args = _parse(argv)
    if args.child:
        figures = _run_step(args.child, args.quick, args.build_root)
        Path(args.result).write_text(json.dumps(figures))
        return 0

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        print(f"error: --output must be a folder, but {output} is a file", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    # Each run builds the simulators afresh, so that the build times are real.
    # The folder holds only this harness's own builds.
    build_root = output / "builds"
    shutil.rmtree(build_root, ignore_errors=True)
    results = {}
    for index, step in enumerate(args.steps, 1):
        print(f"[{index}/{len(args.steps)}] {step} ...", flush=True)
        figures, wall, peak = _child(step, args.quick, build_root, output / f"{step}.json")
        results[step] = {"figures": figures, "wall_seconds": wall, "peak_mib": peak}
        _print_step(step, results[step])

    summary = _summary(results)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "steps": results, "summary": summary,
    }
    (output / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.doc:
        Path(args.doc).write_text(_markdown(report))
    print()
    failed = []
    for key, value in summary.items():
        met, line = _goal_line(key, value)
        print(f"{key} = {value:.2f}, {line}")
        if not met:
            failed.append(key)
    figures = ", ".join(f"{key} {value:.2f}" for key, value in summary.items())
    print(f"bench: {len(results)} steps, {figures}; {len(failed)} goals not met; "
          f"JSON in {output / 'bench.json'}" + (f", page {args.doc}" if args.doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
