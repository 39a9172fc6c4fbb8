#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes python/netdeconv/__init__.pyi from the built extension module (nanobind.stubgen), with
the package's own names and the result types of the functions and layers.

Usage: .venv/bin/python python/make_stubs.py [--check]   (--check: exit 1 if the file differs;
python/tests/test_stubs.py runs it so that the committed stubs follow the module)
"""
import argparse
import os
import re
import sys
import tempfile

from nanobind import stubgen

HERE = os.path.dirname(os.path.abspath(__file__))
STUB = os.path.join(HERE, "netdeconv", "__init__.pyi")
# The installed package, not the sources beside this script.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

HEADER = '''# Type stubs of the netdeconv package: written by python/make_stubs.py from the extension module.
import enum
from typing import Any, TypeAlias

from ._types import ChannelStep, Moments, StatisticsStep, StepGradients, Whitening

Array: TypeAlias = Any
"""A NumPy, PyTorch, JAX or CuPy array, or any object with __dlpack__ or the buffer protocol."""

__version__: str

def build_info() -> dict[str, Any]:
    """The chosen kernels' instruction set ('isa'), the ones this CPU runs ('supported'), and the build."""

'''

# Return types by function name ("Class.method" for methods) where the binding returns a Python object.
RETURNS = {
    "whiten": "Whitening",
    "apply_whitening": "Array",
    "inverse_sqrt": "tuple[Array, IsqrtReport | list[IsqrtReport]]",
    "inverse_sqrt_vjp": "tuple[Array, IsqrtReport | list[IsqrtReport]]",
    "moments": "Moments", "conv_moments": "Moments", "linear_moments": "Moments", "merge": "Moments",
    "covariance": "tuple[Array, Array]",
    "conv_statistics_step": "StatisticsStep", "linear_statistics_step": "StatisticsStep",
    "fold": "tuple[Array, Array]",
    "fold_vjp": "tuple[Array, Array | None, Array, Array]",
    "conv_statistics_step_vjp": "StepGradients", "linear_statistics_step_vjp": "StepGradients",
    "conv_covariance_vjp": "Array", "linear_covariance_vjp": "Array",
    "ConvDeconvLayer.train_step": "StatisticsStep", "LinearDeconvLayer.train_step": "StatisticsStep",
    "ConvDeconvLayer.eval": "tuple[Array, Array]", "LinearDeconvLayer.eval": "tuple[Array, Array]",
    "ConvDeconvLayer.backward": "StepGradients", "LinearDeconvLayer.backward": "StepGradients",
    "ChannelDeconvLayer.train_step": "ChannelStep", "ChannelDeconvLayer.eval": "Array",
    "ChannelDeconvLayer.backward": "tuple[Array, IsqrtReport]",
    "ConvDeconvLayer.running": "tuple[Array, Array]", "LinearDeconvLayer.running": "tuple[Array, Array]",
    "ChannelDeconvLayer.running": "tuple[Array, Array]",
}


def generate():
    import netdeconv
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "core.pyi")
        sg = stubgen.StubGen(netdeconv._core)
        sg.put(netdeconv._core)
        with open(path, "w") as f:
            f.write(sg.get())
        text = open(path).read()
    lines, cls = [], None
    for line in text.splitlines():
        if line == "import enum":
            continue
        m = re.match(r"class (\w+)", line)
        if m:
            cls = m.group(1)
        elif re.match(r"\S", line):
            cls = None
        m = re.match(r"\s*def (\w+)\(", line)
        if m:
            name = f"{cls}.{m.group(1)}" if cls and line.startswith(" ") else m.group(1)
            if name in RETURNS:
                line = re.sub(r"-> object:", f"-> {RETURNS[name]}:", line)
            line = line.replace("config: object", "config: ConvConfig | LinearConfig")
            line = line.replace("dtype: object | None", "dtype: str | None")
            line = re.sub(r": object\b", ": Array", line)
        # The build's facts (isa, simd_arch, compiler, ...) differ between machines and builds: types only.
        line = re.sub(r"^(\w+): (str|bool) = .*$", r"\1: \2", line)
        lines.append(line)
    return HEADER + "\n".join(lines).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = generate()
    if args.check:
        current = open(STUB).read() if os.path.exists(STUB) else ""
        if current != text:
            sys.exit(f"{STUB} is stale: run python/make_stubs.py")
        return
    with open(STUB, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
