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
    # The RTL row is the compiled layer with the default SVD-MP, so it equals the svd-mp scheme.
    assert sqnr["rtl"] == sqnr["hgq + smooth + svd-mp"]
    assert sqnr["hgq + smooth + svd-mp"] > sqnr["int4 group-64 fp16"]
    assert abs(sqnr["hgq + smooth + svd-mp"] - sqnr["hgq + smooth + svd"]) < 0.2
    assert summary["svdmp"]["wide_components"] == 8
    assert summary["svdmp"]["slice_ratio"] == 0.5
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
