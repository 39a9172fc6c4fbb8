# SPDX-License-Identifier: MIT
"""The kernels chosen at run time: build_info, the NETDECONV_ISA override, and the same results
from every instruction-set module this CPU runs (each in its own interpreter)."""
import json
import os
import subprocess
import sys

import pytest

import netdeconv as nd

PROBE = r"""
import json, numpy as np, netdeconv as nd
rng = np.random.default_rng(7)
x = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24))
X = rng.standard_normal((2, 8, 9, 9)); W = rng.standard_normal((5, 8, 3, 3))
step = nd.conv_statistics_step(X, W, None, nd.ConvConfig(3, padding=1, block=4))
print(json.dumps({"info": nd.build_info(), "whiten": nd.whiten(x).data.tolist(), "weight": step.weight.ravel().tolist()}))
"""


def run(isa):
    env = dict(os.environ, NETDECONV_ISA=isa)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd="/")
    return out


def test_build_info_names_the_chosen_kernels():
    info = nd.build_info()
    assert info["isa"] in info["supported"] and info["isa"] == nd._core.isa
    assert info["supported"][0] == info["isa"] or info["requested"]
    assert info["openmp"] is True
    # scripts/sanitize runs this suite on its AddressSanitizer build, and says so.
    assert info["address_sanitizer"] is (os.environ.get("NETDECONV_EXPECT_SANITIZED") == "1")


def test_every_supported_module_gives_the_same_results():
    import numpy as np
    supported = nd.build_info()["supported"]
    if len(supported) < 2:
        pytest.skip(f"this CPU runs only {supported}; the per-ISA comparison needs two modules")
    results = {}
    for isa in supported:
        out = run(isa)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["info"]["isa"] == isa
        results[isa] = r
    base = results[supported[-1]]
    for isa, r in results.items():
        for key in ("whiten", "weight"):
            a, b = np.array(r[key]), np.array(base[key])
            assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-12, (isa, key)


def test_an_unsupported_or_unknown_isa_is_refused():
    out = run("avx9000")
    assert out.returncode != 0 and "NETDECONV_ISA='avx9000'" in out.stderr
