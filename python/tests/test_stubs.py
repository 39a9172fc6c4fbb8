# SPDX-License-Identifier: MIT
"""The shipped type stubs follow the module: python/make_stubs.py --check regenerates them."""
import os
import subprocess
import sys

from conftest import ROOT

import netdeconv as nd


def test_stubs_are_current_and_cover_the_package():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "python", "make_stubs.py"), "--check"],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    with open(os.path.join(ROOT, "python", "netdeconv", "__init__.pyi")) as f:
        stub = f.read()
    for name in nd.__all__:
        assert f"def {name}(" in stub or f"class {name}" in stub or f"{name}:" in stub or \
            f"import {name}" in stub or f", {name}" in stub, name
