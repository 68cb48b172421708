"""pytest hooks: a closing line that counts the cocotb cases run under each simulator."""

from sim.runner import SIMULATORS


def pytest_terminal_summary(terminalreporter):
    counts = {}
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if report.when != "call" or "/test_cocotb" not in report.nodeid:
                continue
            for simulator in SIMULATORS:
                if report.nodeid.endswith(f"-{simulator}]"):
                    counts.setdefault(simulator, {"passed": 0, "failed": 0})[outcome] += 1
    if counts:
        parts = [f"{simulator}: {c['passed']} passed, {c['failed']} failed" for simulator, c in sorted(counts.items())]
        terminalreporter.write_line("cocotb cases by simulator: " + "; ".join(parts))
