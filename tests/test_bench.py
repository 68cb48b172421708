"""The benchmark harness: goals, summary and report page, on figures given by hand."""

import pytest

from sim import bench


def report(residual_ratio, verilator_speed, icarus_speed, layer_seconds):
    steps = {
        "golden": {"figures": {"residual_over_matmul": residual_ratio, "layer_over_matmul": 5.0, "layers": {
            "layer0.ffn_in": {"shape": {"tokens": 59, "k": 384, "n": 1536}, "matmul_float32_ms": 1.0,
                              "residual_ms": residual_ratio, "layer_ms": 5.0,
                              "residual_over_matmul": residual_ratio, "layer_over_matmul": 5.0}}},
            "wall_seconds": 2.0, "peak_mib": 200.0},
        "simulators": {"figures": {
            name: {"cycles": 1000, "simulation_seconds": 1000 / speed, "cycles_per_second": speed,
                   "build_seconds": 3.0, "mismatches": 0}
            for name, speed in (("verilator", verilator_speed), ("icarus", icarus_speed))},
            "wall_seconds": 30.0, "peak_mib": 900.0},
        "layer": {"figures": {"layer": "layer0.ffn_in", "tokens": 59, "outputs": 90624, "cycles": 275344,
                              "simulation_seconds": layer_seconds, "build_seconds": 90.0, "mismatches": 0},
                  "wall_seconds": 150.0, "peak_mib": 1500.0},
    }
    return steps


def test_summary_ratios():
    summary = bench._summary(report(1.5, 3000.0, 100.0, 40.0))
    assert summary == {"residual_over_matmul": 1.5, "verilator_over_icarus": 30.0,
                       "layer_simulation_seconds": 40.0}


@pytest.mark.parametrize("key, value, met", [
    ("residual_over_matmul", 2.0, True), ("residual_over_matmul", 2.01, False),
    ("verilator_over_icarus", 10.0, True), ("verilator_over_icarus", 9.9, False),
    ("layer_simulation_seconds", 59.9, True), ("layer_simulation_seconds", 60.0, False),
])
def test_goal_bounds(key, value, met):
    assert bench._goal_line(key, value)[0] is met


def test_page_lists_goals_and_steps():
    steps = report(2.5, 3000.0, 100.0, 40.0)
    page = bench._markdown({"date": "2026-01-01 00:00 UTC", "quick": False,
                            "machine": {"cpus": 2, "platform": "Linux", "python": "3.11.7"},
                            "steps": steps, "summary": bench._summary(steps)})
    assert "| bit-exact residual product at most 2x a float32 matmul | 2.50 | <= 2 | no |" in page
    assert "| Verilator at least 10x the cycles per second of Icarus | 30.00 | >= 10 | yes |" in page
    assert "| layer0.ffn_in | 59 x 384 x 1536 | 1.00 | 2.50 | 2.50 | 5.00 | 5.00 |" in page
    assert "| simulators | 30.0 | 900 |" in page


def test_unknown_step_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--steps", "golden,area"])
    assert "--steps must name steps from golden, verilog, simulators, layer, not 'golden,area'" in capsys.readouterr().err


def test_output_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert bench.main(["--output", str(target), "--steps", "golden"]) == 2
    assert "--output must be a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
