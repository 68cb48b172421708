"""The design-space sweep: grid, checks, figures against the golden model, resume, outputs and Dask."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

import sim.sweep
from golden.accuracy import compare_schemes
from golden.hgq import HGQConfig
from golden.lowrank import SVDMPConfig
from golden.minilm import capture_linear_layers
from hw.perf import layer_energy, predict_cycles
from sevedo.cli import main
from sim.sweep import (GridError, SweepGrid, SweepPoint, evaluate_point, hardware_parameters, layer_shapes,
                       load_grid_file, make_settings, open_executor, parse_axis, pareto_front, point_id,
                       run_sweep, validate_points)

# One small layer keeps a point at about a second.
QUICK = make_settings(layers=("layer2.query",), area=False)


@pytest.fixture(scope="module")
def shapes():
    return layer_shapes(capture_linear_layers(), QUICK.layers)


def counting(monkeypatch):
    """Replace evaluate_point with a wrapper that records the points it evaluates."""
    calls = []

    def wrapper(point, settings):
        calls.append(point)
        return evaluate_point(point, settings)

    monkeypatch.setattr(sim.sweep, "evaluate_point", wrapper)
    return calls


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# Grid


def test_grid_points_every_combination():
    grid = SweepGrid(rank=(16, 32), shift_bits=(1, 2), wide_count=(4,), energy_fraction=(0.5,), rows=(4, 8))
    points = grid.points()
    assert len(points) == 2 * 2 * 2 * 2
    assert points[0] == SweepPoint(rank=16, shift_bits=1, wide_count=4, rows=4)
    assert points[1] == SweepPoint(rank=16, shift_bits=1, wide_count=4, rows=8)
    assert points[2] == SweepPoint(rank=16, shift_bits=1, wide_count=None, energy_fraction=0.5, rows=4)
    assert len(set(points)) == len(points)


def test_grid_needs_policy_and_values():
    with pytest.raises(GridError, match="^the grid must have at least one SVD-MP policy"):
        SweepGrid(wide_count=())
    with pytest.raises(GridError, match="^the grid must have at least one value of rows$"):
        SweepGrid(rows=())


def test_parse_axis_values():
    assert parse_axis("rank", "16, 32,16") == (16, 32)
    assert parse_axis("energy_fraction", "0.5,1") == (0.5, 1.0)
    with pytest.raises(GridError) as error:
        parse_axis("coarse_group", "64,x")
    assert str(error.value) == "--coarse-group must be a comma-separated list of integers, not '64,x'"


def test_grid_file_json_and_toml(tmp_path):
    json_path = tmp_path / "grid.json"
    json_path.write_text(json.dumps({"rank": [16, 32], "shift-bits": 1, "layers": ["layer2.query"],
                                     "alpha": -1}))
    axes, settings = load_grid_file(json_path)
    assert axes == {"rank": (16, 32), "shift_bits": (1,)}
    assert settings == {"layers": ("layer2.query",), "alpha": None}
    toml_path = tmp_path / "grid.toml"
    toml_path.write_text('rank = [8]\nenergy_fraction = [0.5, 0.75]\nlvc_lanes = 16\nlayers = "all"\n')
    axes, settings = load_grid_file(toml_path)
    assert axes == {"rank": (8,), "energy_fraction": (0.5, 0.75)}
    assert settings == {"lvc_lanes": 16, "layers": "all"}


@pytest.mark.parametrize("text, suffix, message", [
    ('{"ranks": [16]}', ".json", "has the unknown key 'ranks'; known keys: rank, coarse_group,"),
    ('{"rank": [16.5]}', ".json", ": rank must be integers or a list of them, not 16.5"),
    ('{"rank": [true]}', ".json", ": rank must be integers or a list of them, not True"),
    ('[16, 32]', ".json", " must contain one table of axes and settings, not a list"),
    ('{"rank": [16', ".json", " is not valid JSON: "),
    ('rank = [16', ".toml", " is not valid TOML: "),
    ('{"layers": ["layer9.query"]}', ".json", ": layers must name MiniLM linear layers (layer0.query ... "
                                              "layer5.ffn_out), not 'layer9.query'"),
])
def test_grid_file_errors(tmp_path, text, suffix, message):
    path = tmp_path / f"grid{suffix}"
    path.write_text(text)
    with pytest.raises(GridError) as error:
        load_grid_file(path)
    assert str(error.value).startswith(f"grid file {str(path)!r}")
    assert message in str(error.value)


def test_grid_file_missing(tmp_path):
    with pytest.raises(GridError) as error:
        load_grid_file(tmp_path / "none.json")
    assert str(error.value) == f"grid file {str(tmp_path / 'none.json')!r} cannot be read: No such file or directory"


# Checks of the points before any run


@pytest.mark.parametrize("point, message", [
    (SweepPoint(coarse_group=40), "coarse_group must be a multiple of fine_group (16), not 40"),
    (SweepPoint(lanes=5), "lanes must divide fine_group (16), not 5"),
    (SweepPoint(shift_bits=5), "shift_bits must be an integer from 0 to 4, not 5"),
    (SweepPoint(rank=4, wide_count=8), "wide_count must be at most rank (4), not 8"),
    (SweepPoint(rank=-1), "rank must be a non-negative integer, not -1"),
    (SweepPoint(rank=400), "rank must be at most min(N, K) = 384 of layer layer2.query, not 400"),
    (SweepPoint(wide_count=None, energy_fraction=1.5), "energy_fraction must be a number in (0, 1], not 1.5"),
    (SweepPoint(coarse_group=256), "layer layer2.query does not fit the core: K must be a positive multiple of "
                                   "coarse_group (256) up to max_k (512), not 384"),
    (SweepPoint(rows=64), "lvc_lanes must be a multiple of rows (64), not 32"),
])
def test_invalid_point_named(shapes, point, message):
    with pytest.raises(GridError) as error:
        validate_points([SweepPoint(), point], QUICK, shapes)
    assert str(error.value) == (f"1 of 2 grid points are invalid, so no point was run (--skip-invalid runs the "
                                f"valid ones):\n  {point.describe()}: {message}")


def test_invalid_points_skipped(shapes):
    points = SweepGrid(coarse_group=(40, 128), rank=(4, 16)).points()
    valid, errors = validate_points(points, QUICK, shapes, skip_invalid=True)
    assert valid == [SweepPoint(rank=16)]
    assert len(errors) == 3


def test_all_points_invalid(shapes):
    with pytest.raises(GridError) as error:
        validate_points([SweepPoint(lanes=5)], QUICK, shapes, skip_invalid=True)
    assert str(error.value) == (f"all 1 grid points are invalid:\n  {SweepPoint(lanes=5).describe()}: "
                                "lanes must divide fine_group (16), not 5")


def test_cli_rejects_grid_before_running(tmp_path, capsys):
    output = tmp_path / "sweep"
    status = main(["sweep", "--rank", "16,32", "--coarse-group", "64,100", "--no-area", "--layers", "layer2.query",
                   "-o", str(output)])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("sevedo sweep: error: 2 of 4 grid points are invalid, so no point was run")
    assert "rank=16 coarse_group=100 fine_group=16 shift_bits=2 wide_count=8 rows=8 lanes=16: coarse_group must " \
           "be a multiple of fine_group (16), not 100" in err
    assert not output.exists()


@pytest.mark.parametrize("argv, message", [
    (["--rank", "16,x"], "--rank must be a comma-separated list of integers, not '16,x'"),
    (["--workers", "0"], "--workers must be a positive integer, not 0"),
    (["--layers", "layer2.quer"], "layers must name MiniLM linear layers (layer0.query ... layer5.ffn_out), "
                                  "not 'layer2.quer'"),
    (["--alpha", "2"], "alpha must be a number in [0, 1] or None, not 2.0"),
    (["--narrow-bits", "12"], "narrow_bits must be an integer from 1 to wide_bits (11), not 12"),
    (["--lvc-lanes", "0"], "lvc_lanes must be a positive integer, not 0"),
    (["--area-targets", "generic,xilinx"], "area target must be one of generic, ice40, ecp5, not 'xilinx'"),
    (["--energy-table", "/nonexistent/table.json"],
     "energy table '/nonexistent/table.json' cannot be read: No such file or directory"),
])
def test_cli_bad_input(tmp_path, capsys, argv, message):
    assert main(["sweep", "--no-area", "-o", str(tmp_path / "out"), *argv]) == 2
    assert capsys.readouterr().err == f"sevedo sweep: error: {message}\n"


def test_cli_output_is_file(tmp_path, capsys):
    output = tmp_path / "file"
    output.write_text("not a folder")
    assert main(["sweep", "--no-area", "--layers", "layer2.query", "--no-progress", "-o", str(output)]) == 2
    assert capsys.readouterr().err == f"sevedo sweep: error: output folder {str(output)!r} is a file, not a folder\n"
    assert output.read_text() == "not a folder"


# Identities


def test_point_id_stable(monkeypatch):
    point = SweepPoint()
    script = "from sim.sweep import SweepPoint, make_settings, point_id; print(point_id(SweepPoint(), make_settings()))"
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == point_id(point, make_settings())
    assert point_id(point, make_settings(whole_model=True, area=False)) == point_id(point, make_settings())
    assert point_id(point, make_settings(alpha=None)) != point_id(point, make_settings())
    assert point_id(replace(point, rank=16), make_settings()) != point_id(point, make_settings())
    before = point_id(point, make_settings())
    monkeypatch.setattr(sim.sweep, "source_digest", lambda: "0" * 16)
    assert point_id(point, make_settings()) != before


def test_hardware_ignores_svdmp_policy(shapes):
    fixed = hardware_parameters(SweepPoint(wide_count=4), QUICK, shapes)
    energy = hardware_parameters(SweepPoint(wide_count=None, energy_fraction=0.5), QUICK, shapes)
    assert fixed == energy
    assert hardware_parameters(SweepPoint(rank=16), QUICK, shapes) != fixed


def test_rtl_ignores_svdmp_policy():
    # The claim behind the area cache: the policy and the narrow width change no line of the core's Verilog.
    from amaranth.back import verilog

    from hw.hetero import HeterogeneousCore

    parameters = {"rows": 2, "lanes": 8, "coarse_group": 32, "fine_group": 8, "shift_bits": 1, "rank": 2,
                  "lvc_lanes": 8, "slice_bits": 4, "wide_bits": 11, "max_k": 32, "max_n": 8}
    config = sim.sweep.core_config(parameters)
    other = replace(config, svdmp=SVDMPConfig(wide_count=None, energy_fraction=0.5, narrow_bits=2))
    assert verilog.convert(HeterogeneousCore(config), name="core") == \
        verilog.convert(HeterogeneousCore(other), name="core")


# Figures


def test_point_figures_match_golden_and_models():
    settings = make_settings(layers=("layer2.query", "layer5.ffn_out"), area=False)
    point = SweepPoint(rank=16, shift_bits=1, wide_count=4, rows=4)
    record = evaluate_point(point, settings)
    captures = capture_linear_layers()
    quant = HGQConfig(shift_bits=1)
    svdmp = SVDMPConfig(wide_count=4)
    config = sim.sweep.point_configs(point, settings, layer_shapes(captures, settings.layers)).core
    picojoules = cycles = busy = 0
    for name in settings.layers:
        capture = captures[name]
        sqnr = compare_schemes(capture.x, capture.weight, quant, rank=16, alpha=0.5, svdmp=svdmp,
                               schemes=("hgq + smooth + svd-mp",))
        assert record["layer_sqnr_db"][name] == sqnr["hgq + smooth + svd-mp"]
        tokens, k = capture.x.shape
        n = capture.weight.shape[0]
        bits = [11] * 4 + [4] * 12
        picojoules += layer_energy(config, tokens, k, n, bits).picojoules
        prediction = predict_cycles(config, tokens, k, n, bits)
        cycles += prediction.cycles
        busy += prediction.busy
    figures = record["figures"]
    assert figures["sqnr_mean_db"] == np.mean(list(record["layer_sqnr_db"].values()))
    assert figures["sqnr_min_db"] == min(record["layer_sqnr_db"].values())
    assert figures["energy_nj_per_token"] == picojoules / 59 / 1e3
    assert figures["cycles_per_token"] == cycles / 59
    assert figures["pe_utilization"] == busy / cycles
    assert figures["slice_ratio"] == (4 * 3 + 12 * 1) / (16 * 3)
    assert record["id"] == point_id(point, settings)
    assert record["status"] == "ok"


def test_energy_policy_point():
    record = evaluate_point(SweepPoint(rank=8, wide_count=None, energy_fraction=1.0), QUICK)
    # Every component is wide, so SVD-MP needs all the slices of the all-wide path.
    assert record["figures"]["slice_ratio"] == 1.0


def test_pareto_front_ties_and_order():
    assert pareto_front([], []) == []
    assert pareto_front([1, 1], [5, 5]) == [True, True]
    assert pareto_front([1, 1], [5, 6]) == [False, True]
    assert pareto_front([3, 1, 2], [3, 1, 2]) == [True, True, True]
    assert pareto_front([1, 2, 3], [3, 2, 1]) == [True, False, False]


# Resume, failures and outputs


def test_resume_reuses_finished_points(tmp_path, monkeypatch, shapes):
    calls = counting(monkeypatch)
    output = tmp_path / "sweep"
    with ThreadPoolExecutor(2) as executor:
        first = run_sweep(SweepGrid(rank=(8,)).points(), QUICK, output, executor, shapes=shapes, progress=False)
        assert (first.computed, first.reused, len(calls)) == (1, 0, 1)
        stored = read_lines(output / "results.jsonl")

        grid = SweepGrid(rank=(8, 16), shift_bits=(1, 2))
        second = run_sweep(grid.points(), QUICK, output, executor, shapes=shapes, progress=False)
        assert (second.computed, second.reused, second.failed) == (3, 1, 0)
        assert len(calls) == 4
        assert calls.count(SweepPoint(rank=8, shift_bits=2)) == 1

        third = run_sweep(grid.points(), QUICK, output, executor, shapes=shapes, progress=False)
    assert (third.computed, third.reused, len(calls)) == (0, 4, 4)
    lines = read_lines(output / "results.jsonl")
    assert len(lines) == 4
    # The first record is the same line, timestamp included: it was never recomputed.
    assert lines[0] == stored[0]
    assert [row["id"] for row in third.rows] == [point_id(point, QUICK) for point in grid.points()]
    assert third.rows == second.rows


def test_failed_point_recorded_and_retried(tmp_path, monkeypatch, shapes):
    output = tmp_path / "sweep"
    broken = SweepPoint(rank=16)

    def failing(point, settings):
        if point == broken:
            raise ValueError("the low-rank intermediate overflows")
        return evaluate_point(point, settings)

    monkeypatch.setattr(sim.sweep, "evaluate_point", failing)
    points = SweepGrid(rank=(8, 16)).points()
    with ThreadPoolExecutor(1) as executor:
        outcome = run_sweep(points, QUICK, output, executor, shapes=shapes, progress=False, log=lambda line: None)
        assert (outcome.computed, outcome.failed) == (1, 1)
        assert outcome.errors == {point_id(broken, QUICK): "ValueError: the low-rank intermediate overflows"}
        assert outcome.rows[1]["status"] == "failed"

        calls = counting(monkeypatch)
        retry = run_sweep(points, QUICK, output, executor, shapes=shapes, progress=False)
    assert calls == [broken]
    assert (retry.computed, retry.reused, retry.failed) == (1, 1, 0)


def test_resume_after_killed_run(tmp_path):
    output = tmp_path / "sweep"
    argv = [sys.executable, "-m", "sevedo", "sweep", "--rank", "4,8,12,16,20,24", "--wide-count", "4",
            "--layers", "layer2.query", "--no-area", "--workers", "1", "--no-progress", "-o", str(output)]
    results = output / "results.jsonl"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 2:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the sweep ended before it could be killed"
    finally:
        # The sweep and its worker process run in their own process group.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = read_lines(results)
    assert 2 <= len(finished) < 6
    # A record cut short by the kill: it is skipped, and the next record starts on a new line.
    with results.open("a") as file:
        file.write('{"id": "cut')

    rerun = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.splitlines()[-1])
    assert summary["reused"] == len(finished)
    assert summary["finished"] == 6 - len(finished)
    assert "skipped 1 unreadable lines of the results files" in rerun.stdout
    lines = results.read_text().splitlines()
    assert lines[:len(finished)] == [json.dumps(record, sort_keys=True) for record in finished]
    assert len({json.loads(line)["id"] for line in lines[len(finished) + 1:]}) == 6 - len(finished)


def test_outputs_csv_json_png(tmp_path, shapes):
    output = tmp_path / "sweep"
    points = SweepGrid(rank=(8, 16), shift_bits=(0, 2)).points()
    with ThreadPoolExecutor(2) as executor:
        outcome = run_sweep(points, QUICK, output, executor, shapes=shapes, progress=False)
    assert set(outcome.paths) == {"csv", "json", "pareto_energy"}
    assert outcome.paths["pareto_energy"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads(outcome.paths["json"].read_text())
    assert document["points"] == outcome.rows
    assert document["settings"]["layers"] == ["layer2.query"]
    with outcome.paths["csv"].open() as file:
        table = list(csv.DictReader(file))
    assert [row["id"] for row in table] == [row["id"] for row in outcome.rows]
    for row, line in zip(outcome.rows, table):
        assert float(line["sqnr_mean_db"]) == row["sqnr_mean_db"]
        assert float(line["energy_nj_per_token"]) == row["energy_nj_per_token"]
        assert line["sqnr_db.layer2.query"] == repr(row["sqnr_db.layer2.query"])
    front = pareto_front([row["energy_nj_per_token"] for row in outcome.rows],
                         [row["sqnr_mean_db"] for row in outcome.rows])
    assert [row["pareto_energy"] for row in outcome.rows] == front
    assert outcome.pareto == {"energy": sum(front)}


def test_cli_summary_line(tmp_path, capsys):
    argv = ["sweep", "--rank", "8,16", "--layers", "layer2.query", "--no-area", "--workers", "2", "--no-progress",
            "-o", str(tmp_path)]
    assert main(argv) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("sweep: 2 points, 0 finished now, 2 reused, 0 failed; Pareto points: ")
    assert out[-1].endswith(f"wrote {tmp_path}/results.csv, {tmp_path}/results.json, {tmp_path}/pareto_energy.png")


def test_retried_point_waits_for_new_record(tmp_path, monkeypatch, shapes):
    # The area arrives first, while the old record of the point still says "failed".
    points = SweepGrid(rank=(8, 16)).points()

    def failing(point, settings):
        raise ValueError("the low-rank intermediate overflows")

    def slow(point, settings):
        time.sleep(0.5)
        return evaluate_point(point, settings)

    monkeypatch.setattr(sim.sweep, "area_figures", lambda parameters, targets: {"transistors": 1, "memory_bits": 0})
    with ThreadPoolExecutor(2) as executor:
        monkeypatch.setattr(sim.sweep, "evaluate_point", failing)
        first = run_sweep(points[:1], QUICK, tmp_path, executor, shapes=shapes, progress=False, log=lambda line: None)
        assert first.failed == 1
        monkeypatch.setattr(sim.sweep, "evaluate_point", slow)
        second = run_sweep(points, replace(QUICK, area=True), tmp_path, executor, shapes=shapes, progress=False)
    assert (second.computed, second.reused, second.failed) == (2, 0, 0)
    assert [row["status"] for row in second.rows] == ["ok", "ok"]


def test_point_from_other_sources_fails(tmp_path, monkeypatch, shapes):
    def other_sources(point, settings):
        return dict(evaluate_point(point, settings), id="0123456789abcdef")

    monkeypatch.setattr(sim.sweep, "evaluate_point", other_sources)
    with ThreadPoolExecutor(1) as executor:
        outcome = run_sweep([SweepPoint(rank=8)], QUICK, tmp_path, executor, shapes=shapes, progress=False,
                            log=lambda line: None)
    assert outcome.failed == 1
    assert outcome.rows[0]["error"].startswith("RuntimeError: the worker computed the id 0123456789abcdef, not ")


def test_area_once_per_hardware(tmp_path, monkeypatch, shapes):
    measured = []

    def fake_area(parameters, targets):
        assert targets == ("generic",)
        measured.append(parameters)
        return {"generic_cells": parameters["rows"], "transistors": 1000 * parameters["rows"] + 60,
                "memory_bits": 10}

    monkeypatch.setattr(sim.sweep, "area_figures", fake_area)
    settings = replace(QUICK, area=True)
    grid = SweepGrid(wide_count=(4, 8), energy_fraction=(0.5,), rows=(4, 8))
    with ThreadPoolExecutor(2) as executor:
        outcome = run_sweep(grid.points(), settings, tmp_path, executor, shapes=shapes, progress=False)
        assert sorted(parameters["rows"] for parameters in measured) == [4, 8]
        assert len(read_lines(tmp_path / "area.jsonl")) == 2
        for row in outcome.rows:
            assert row["area_transistors"] == 1000 * row["rows"] + 60
            assert row["hardware_id"] == sim.sweep.hardware_id(hardware_parameters(SweepPoint(
                **{name: row[name] for name in sim.sweep.AXES}), settings, shapes))
        front = pareto_front([row["area_transistors"] for row in outcome.rows],
                             [row["sqnr_mean_db"] for row in outcome.rows])
        assert [row["pareto_area"] for row in outcome.rows] == front
        assert outcome.paths["pareto_area"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Points measured without area get it later, without a new evaluation.
        calls = counting(monkeypatch)
        more = run_sweep(SweepGrid(rows=(4, 16)).points(), settings, tmp_path, executor, shapes=shapes,
                         progress=False)
    assert calls == [SweepPoint(rows=16)]
    assert sorted(parameters["rows"] for parameters in measured) == [4, 8, 16]
    assert (more.computed, more.reused) == (1, 1)


def test_failed_area_fails_its_points(tmp_path, monkeypatch, shapes):
    def broken_area(parameters, targets):
        raise RuntimeError("Yosys synthesis of the core failed: out of memory")

    monkeypatch.setattr(sim.sweep, "area_figures", broken_area)
    with ThreadPoolExecutor(1) as executor:
        outcome = run_sweep(SweepGrid(wide_count=(4, 8)).points(), replace(QUICK, area=True), tmp_path, executor,
                            shapes=shapes, progress=False, log=lambda line: None)
    assert (outcome.computed, outcome.failed) == (0, 2)
    assert [row["error"] for row in outcome.rows] == \
        ["area: RuntimeError: Yosys synthesis of the core failed: out of memory"] * 2


@pytest.mark.slow
def test_sweep_with_yosys_area(tmp_path, monkeypatch):
    from sim.area import AreaCache, core_design, synthesize, total_metric

    # A tiny core keeps the synthesis to minutes; a fresh build folder makes it run.
    monkeypatch.setenv("SEVEDO_BUILD_DIR", str(tmp_path / "build"))
    output = tmp_path / "sweep"
    argv = ["sweep", "--rank", "2", "--coarse-group", "32", "--fine-group", "8", "--shift-bits", "1",
            "--wide-count", "1,2", "--rows", "2", "--lanes", "8", "--lvc-lanes", "8", "--layers", "layer2.query",
            "--area-targets", "generic,ice40", "--workers", "2", "--no-progress", "-o", str(output)]
    assert main(argv) == 0
    areas = read_lines(output / "area.jsonl")
    assert len(areas) == 1
    hardware, area = areas[0]["hardware"], areas[0]["area"]
    assert hardware["max_k"] == hardware["max_n"] == 384
    results = synthesize(core_design(sim.sweep.core_config(hardware), cache=AreaCache()), ("generic", "ice40"))
    assert all(result["cached"] for result in results.values())
    assert area["transistors"] == total_metric(results["generic"], "transistors") > 0
    assert area["generic_cells"] == total_metric(results["generic"], "cells") > 0
    assert area["ice40_lut4"] == total_metric(results["ice40"], "lut4") > 0
    assert area["memory_bits"] == sum(memory["bits"] for memory in results["generic"]["memories"]) > 0
    rows = json.loads((output / "results.json").read_text())["points"]
    assert [row["area_transistors"] for row in rows] == [area["transistors"]] * 2
    assert [row["pareto_area"] for row in rows] == pareto_front([area["transistors"]] * 2,
                                                                [row["sqnr_mean_db"] for row in rows])
    assert (output / "pareto_area.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main([*argv, "--json"]) == 0
    assert len(read_lines(output / "area.jsonl")) == 1


def test_cli_grid_file_with_override(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"rank": [8, 12], "wide-count": 4, "energy_fraction": [0.5],
                                "layers": ["layer2.query"]}))
    output = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--rank", "16", "--no-area", "--workers", "1", "--no-progress",
                 "-o", str(output)]) == 0
    document = json.loads((output / "results.json").read_text())
    assert document["settings"]["layers"] == ["layer2.query"]
    points = [(row["rank"], row["wide_count"], row["energy_fraction"]) for row in document["points"]]
    assert points == [(16, 4, None), (16, None, 0.5)]


# Dask


def test_cluster_matches_local(tmp_path, shapes):
    from distributed import LocalCluster

    points = SweepGrid(rank=(8, 16), wide_count=(4,), energy_fraction=(0.5,)).points()
    with open_executor(workers=2) as executor:
        local = run_sweep(points, QUICK, tmp_path / "local", executor, shapes=shapes, progress=False)
    with LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        with open_executor(scheduler=cluster.scheduler_address) as executor:
            remote = run_sweep(points, QUICK, tmp_path / "cluster", executor, shapes=shapes, progress=False)
    assert (local.computed, local.failed) == (4, 0), local.errors
    assert (remote.computed, remote.failed) == (4, 0), remote.errors
    assert remote.rows == local.rows
    local_records = {record["id"]: record for record in read_lines(tmp_path / "local" / "results.jsonl")}
    for record in read_lines(tmp_path / "cluster" / "results.jsonl"):
        assert record["figures"] == local_records[record["id"]]["figures"]
        assert record["layer_sqnr_db"] == local_records[record["id"]]["layer_sqnr_db"]


def test_scheduler_unreachable():
    # A socket bound here but not listening: connections to it are refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(RuntimeError) as error:
            with open_executor(scheduler=address, connect_timeout=1):
                pass
    assert str(error.value).startswith(f"cannot connect to the Dask scheduler at {address!r}: ")
    assert str(error.value).endswith("Start one with `dask scheduler` and workers with `dask worker ADDRESS`")
