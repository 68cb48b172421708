"""The main job on the whole default MiniLM layer: every output of the heterogeneous core bit-exact in RTL."""

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
    # The RTL row includes the bias, which the schemes leave out; it stays close to the svd-mp scheme.
    assert abs(sqnr["rtl"] - sqnr["hgq + smooth + svd-mp"]) < 1.0
    assert sqnr["hgq + smooth + svd-mp"] > sqnr["int4 group-64 fp16"]
    assert abs(sqnr["hgq + smooth + svd-mp"] - sqnr["hgq + smooth + svd"]) < 0.2
    assert summary["svdmp"]["wide_components"] == 8
    assert summary["svdmp"]["slice_ratio"] == 0.5
    # The PE array takes T * (N / rows) * (K / lanes) beats, one per busy cycle.
    assert summary["busy_cycles"] == 59 * (1536 // 8) * (384 // 16)
    assert summary["pe_utilization"] >= 0.9


# The full-size core takes about 2 minutes to build for Verilator and 2 to run on 2 cores.
@pytest.mark.slow
def test_default_layer_verilator(capsys):
    code, summary = run_json(["run"], capsys)
    assert code == 0
    check_summary(summary)


@pytest.mark.slow
def test_default_layer_icarus(capsys):
    code, summary = run_json(["run", "--simulator", "icarus"], capsys)
    assert code == 0
    check_summary(summary)
