"""Subcommands of `sevedo`: sweep, the design-space sweep over a grid of configurations."""

import json
import os
import sys
import time

__all__ = ["add_commands"]

# Axis options: (option, attribute, help).
_AXIS_OPTIONS = (
    ("--rank", "rank", "ranks of the low-rank path (default 32)"),
    ("--coarse-group", "coarse_group", "coarse groups Gc, elements per FP16 scale (default 128)"),
    ("--fine-group", "fine_group", "fine groups Gf, elements per shift code (default 16)"),
    ("--shift-bits", "shift_bits", "widths of a fine shift code in bits (default 2)"),
    ("--wide-count", "wide_count",
     "SVD-MP fixed-count policies: components that keep the FP16 significand (default 8 unless "
     "--energy-fraction is given)"),
    ("--energy-fraction", "energy_fraction",
     "SVD-MP energy policies: fractions in (0, 1] of the squared singular values that the wide components hold"),
    ("--rows", "rows", "RMC rows, output channels computed in parallel (default 8)"),
    ("--lanes", "lanes", "RMC lanes, elements of K per row per cycle (default 16)"),
)


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    sweep = commands.add_parser(
        "sweep", help="sweep a grid of configurations: accuracy, area and energy, with Pareto plots",
        description="Evaluate every combination of the grid's values: the mean output SQNR of selected MiniLM "
                    "layers in the golden model, the area of the core with Yosys, and the energy per token and "
                    "cycles of the cycle and energy models (energies are estimates). Each axis option takes a "
                    "comma-separated list. Points run on local processes or on a Dask cluster. Finished points "
                    "are kept in the output folder, and a rerun reuses them. Exits with 2 on invalid options or "
                    "an invalid grid point, and with 1 if a point fails.")
    grid = sweep.add_argument_group("grid (comma-separated values, such as --rank 16,32)")
    for option, name, text in _AXIS_OPTIONS:
        grid.add_argument(option, dest=name, metavar="LIST", help=text)
    grid.add_argument("--grid", metavar="FILE",
                      help="JSON or TOML file of axes and settings; options given on the command line win")
    grid.add_argument("--skip-invalid", action="store_true",
                      help="run the valid points and list the invalid ones, instead of stopping")

    settings = sweep.add_argument_group("settings of every point")
    settings.add_argument("--layers", metavar="LIST",
                          help="comma-separated MiniLM linear layers, or 'all' (default: "
                               "layer0.ffn_in,layer2.query,layer4.attn_out,layer5.ffn_out)")
    settings.add_argument("--alpha", type=float,
                          help="smoothing strength in [0, 1]; a negative value disables smoothing (default 0.5)")
    settings.add_argument("--narrow-bits", type=int, help="significand bits of a narrow component (default 4)")
    settings.add_argument("--slice-bits", type=int, help="significand bits per multiplier slice (default 4)")
    settings.add_argument("--lvc-lanes", type=int, help="FP lanes of the low-rank vector core (default 32)")
    settings.add_argument("--energy-table", metavar="FILE",
                          help="JSON object of energy entries in picojoules that replace the defaults")
    settings.add_argument("--whole-model", action="store_true",
                          help="also measure the whole-model embedding cosine (about 10 s more per point)")
    settings.add_argument("--no-area", action="store_true", help="skip the Yosys area measurement")
    settings.add_argument("--area-targets", metavar="LIST",
                          help="comma-separated Yosys targets of the area: generic, ice40, ecp5 (default generic)")

    run = sweep.add_argument_group("execution")
    run.add_argument("--output", "-o", default="build/sweep",
                     help="output folder; a rerun with the same folder reuses finished points (default build/sweep)")
    run.add_argument("--workers", type=int, help="local worker processes (default: the number of CPUs)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run the points on the Dask cluster of this scheduler, such as tcp://host:8786")
    run.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    run.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    sweep.set_defaults(handler=_command_sweep)


def _grid_and_settings(args):
    """Return the grid and the settings of the options and of the grid file; the options win."""
    from golden.energy import load_energy_table
    from sim.sweep import SweepGrid, load_grid_file, make_settings, parse_axis

    axes, settings = load_grid_file(args.grid) if args.grid else ({}, {})
    for _, name, _ in _AXIS_OPTIONS:
        text = getattr(args, name)
        if text is not None:
            axes[name] = parse_axis(name, text)
    # An energy fraction alone replaces the default fixed count.
    if "energy_fraction" in axes and "wide_count" not in axes:
        axes["wide_count"] = ()
    if args.layers is not None:
        settings["layers"] = "all" if args.layers == "all" else [name.strip() for name in args.layers.split(",")]
    if args.alpha is not None:
        settings["alpha"] = None if args.alpha < 0 else args.alpha
    for name in ("narrow_bits", "slice_bits", "lvc_lanes"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.energy_table is not None:
        settings["energy_table"] = load_energy_table(args.energy_table).as_dict()
    if args.area_targets is not None:
        settings["area_targets"] = [target.strip() for target in args.area_targets.split(",")]
    settings["whole_model"] = args.whole_model
    settings["area"] = not args.no_area
    return SweepGrid(**axes), make_settings(**settings)


def _summary_line(outcome, total, invalid):
    paths = ", ".join(str(path) for path in outcome.paths.values())
    fronts = ", ".join(f"{count} for SQNR against {kind}" for kind, count in outcome.pareto.items())
    skipped = f", {invalid} invalid skipped" if invalid else ""
    return (f"sweep: {total} points, {outcome.computed} finished now, {outcome.reused} reused, "
            f"{outcome.failed} failed{skipped}; Pareto points: {fronts}; wrote {paths}")


def _command_sweep(args):
    from sim.sweep import default_captures, layer_shapes, open_executor, run_sweep, validate_points

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, not {args.workers}")
    started = time.perf_counter()
    grid, settings = _grid_and_settings(args)
    shapes = layer_shapes(default_captures(), settings.layers)
    points, invalid = validate_points(grid.points(), settings, shapes, skip_invalid=args.skip_invalid)
    for message in invalid:
        print(f"invalid point skipped: {message}")
    measured = "SQNR, energy and cycles"
    if settings.whole_model:
        measured += ", whole-model cosine"
    if settings.area:
        measured += ", area"
    where = (f"the Dask cluster at {args.scheduler}" if args.scheduler
             else f"{args.workers or os.cpu_count()} local processes")
    print(f"sweep of {len(points)} points over {len(settings.layers)} MiniLM layers ({measured}) on {where}; "
          f"output {args.output}", flush=True)
    try:
        with open_executor(args.workers, args.scheduler) as executor:
            outcome = run_sweep(points, settings, args.output, executor, shapes=shapes,
                                progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"sweep interrupted; finished points are kept in {args.output}, and the same command resumes",
              file=sys.stderr)
        return 130
    if outcome.skipped_lines:
        print(f"skipped {outcome.skipped_lines} unreadable lines of the results files in {args.output}")
    _print_table(outcome.rows, settings)
    print(_summary_line(outcome, len(points), len(invalid)))
    if args.json:
        print(json.dumps({
            "points": len(points), "finished": outcome.computed, "reused": outcome.reused,
            "failed": outcome.failed, "invalid": len(invalid), "pareto": outcome.pareto,
            "paths": {kind: str(path) for kind, path in outcome.paths.items()},
            "total_seconds": round(time.perf_counter() - started, 3),
        }))
    return 1 if outcome.failed else 0


def _format(value, spec):
    return "-" if value is None else format(value, spec)


def _print_table(rows, settings):
    header = (f"{'rank':>4} {'Gc':>4} {'Gf':>3} {'sb':>2} {'policy':>7} {'array':>6} {'SQNR dB':>8} "
              f"{'nJ/tok':>8} {'cyc/tok':>8} {'util':>6}")
    if settings.whole_model:
        header += f" {'cosine':>7}"
    if settings.area:
        header += f" {'transistors':>11}"
    print()
    print(header + "  front")
    for row in rows:
        policy = f"w{row['wide_count']}" if row["wide_count"] is not None else f"e{row['energy_fraction']:g}"
        line = (f"{row['rank']:>4} {row['coarse_group']:>4} {row['fine_group']:>3} {row['shift_bits']:>2} "
                f"{policy:>7} {row['rows']:>3}x{row['lanes']:<2} ")
        if row["status"] != "ok":
            print(line + f"failed: {row['error']}")
            continue
        line += (f"{row['sqnr_mean_db']:>8.2f} {row['energy_nj_per_token']:>8.1f} "
                 f"{row['cycles_per_token']:>8.0f} {row['pe_utilization']:>6.1%}")
        if settings.whole_model:
            line += f" {_format(row.get('model_cosine_mean'), '7.4f')}"
        if settings.area:
            line += f" {_format(row.get('area_transistors'), '11d')}"
        fronts = [kind for kind in ("area", "energy") if row.get(f"pareto_{kind}")]
        print(line + "  " + ",".join(fronts))
    print()
