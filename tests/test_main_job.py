"""The main job on the whole default MiniLM layer: every residual output bit-exact in RTL."""

import json

import pytest

from sevedo.cli import main


def run_json(argv, capsys):
    code = main(argv + ["--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return code, summary


def check_summary(summary):
    assert summary["mismatches"] == 0
    assert summary["outputs"] == summary["tokens"] * 1536 == 59 * 1536
    sqnr = summary["sqnr_db"]
    assert sqnr["rtl"] == sqnr["hgq + smooth + svd"]
    assert sqnr["hgq + smooth + svd"] > sqnr["int4 group-64 fp16"]
    # One beat per cycle: T * (N / rows) * (K / lanes) beats, plus the pipeline latency.
    assert summary["cycles"] <= 59 * (1536 // 8) * (384 // 16) + 8


def test_default_layer_verilator(capsys):
    code, summary = run_json(["run"], capsys)
    assert code == 0
    check_summary(summary)


@pytest.mark.slow
def test_default_layer_icarus(capsys):
    code, summary = run_json(["run", "--simulator", "icarus"], capsys)
    assert code == 0
    check_summary(summary)
