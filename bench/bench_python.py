#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""netdeconv.whiten from Python against what a Python user would reach for, in one run.

1. Call overhead: netdeconv.whiten(x) from Python on tiny float64 x against the same C++ call
   timed inside the module (netdeconv._core._time_whiten), both medians of single calls.
2. ZCA whitening, data = (x - mu) (Cov + eps I)^(-1/2) with the biased covariance and eps = 1e-5:
   netdeconv.whiten (exact float64 path, float64 and float32 input; Newton-Schulz variants)
   against NumPy (numpy.linalg.eigh), SciPy (scipy.linalg.eigh, drivers evr and evd) and
   scikit-learn's PCA(whiten=True) (PCA whitening, not ZCA: timed, and its whiteness reported),
   kornia's ZCA when kornia imports. Data: patches of a natural image, sklearn's digits, random
   matrices with correlated columns. Each repetition runs every method once, in a rotating order;
   the tables give medians over the repetitions. Errors are ||out - ref||_F / ||ref||_F against the
   NumPy float64 ZCA of the same data (the NumPy row is the reference itself); whiteness is
   ||Cov(out) - I||_F / sqrt(F) (biased covariance, PCA's own n - 1 for PCA), which eps bounds
   from below for every ZCA.
3. Where netdeconv's time goes: its moments + covariance, inverse square root and application
   timed alone, next to NumPy's covariance product, eigh and product.

Every library runs on --threads threads (default: all cores): netdeconv's OpenMP through
netdeconv.set_num_threads, OpenBLAS (NumPy, SciPy, scikit-learn) through threadpoolctl.
Each case prints a table and a machine-readable line `RESULT {json}`.

  .venv/bin/python bench/bench_python.py [--quick] [--threads N] [--image PATH]
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import time

import numpy as np
import scipy
import scipy.linalg
import sklearn
import threadpoolctl
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

import netdeconv

EPS = 1e-5
DEFAULT_IMAGE = pathlib.Path(__file__).resolve().parent.parent / "data" / "raccoon_face_256x192.png"

try:
    import kornia
except ImportError:
    kornia = None


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), platform.processor())


# ---------------------------------------------------------------------------------------------
# The methods. Each takes x (n, F) and returns the whitened (n, F).

def numpy_zca(x):
    mu = x.mean(axis=0)
    xc = x - mu
    w, V = np.linalg.eigh(xc.T @ xc / len(x))
    return xc @ ((V / np.sqrt(w + EPS)) @ V.T)


def scipy_zca(driver):
    def run(x):
        mu = x.mean(axis=0)
        xc = x - mu
        w, V = scipy.linalg.eigh(xc.T @ xc / len(x), driver=driver, check_finite=False)
        return xc @ ((V / np.sqrt(w + EPS)) @ V.T)
    return run


def sklearn_pca(x):
    return PCA(whiten=True).fit_transform(x)


def kornia_zca(x):
    import torch
    t = torch.from_numpy(x)
    return kornia.enhance.ZCAWhitening(eps=EPS, unbiased=False, compute_inv=False).fit(t)(t).numpy()


def netdeconv_zca(isqrt=None, dtype=np.float64):
    kwargs = {} if isqrt is None else {"isqrt": isqrt}
    return lambda x: netdeconv.whiten(x, **kwargs).data, dtype


# ---------------------------------------------------------------------------------------------
# Timing

def interleaved(calls, reps):
    """Median seconds of each calls[name]() over reps rounds; round r runs them all, rotated by r."""
    names = list(calls)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def call_overhead(shape, samples, calls):
    """(Python median, C++ median) nanoseconds of one whiten call on a float64 x of shape."""
    x = np.random.default_rng(1).standard_normal(shape)
    python_ns, cpp_ns = [], []
    netdeconv.whiten(x)
    for _ in range(samples):
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            netdeconv.whiten(x)
            python_ns.append(time.perf_counter_ns() - t0)
        cpp_ns.append(netdeconv._core._time_whiten(x, calls))
    return float(np.median(python_ns)), float(np.median(cpp_ns))


# ---------------------------------------------------------------------------------------------
# Data

def image_patches(path):
    """(name, x) cases from one RGB image: 8x8x3 colour patches and 16x16 grey patches, stride 1."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return [("image 8x8x3 patches", sliding_window_view(rgb, (8, 8, 3)).reshape(-1, 192).copy()),
            ("image 16x16 grey patches", sliding_window_view(grey, (16, 16)).reshape(-1, 256).copy())]


def correlated(F, rng):
    n = max(4 * F, 2000)
    return f"random correlated F={F}", rng.standard_normal((n, F)) @ (rng.standard_normal((F, F)) / np.sqrt(F))


def relative_error(out, ref):
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


def whiteness(out, ddof=0):
    out = out.astype(np.float64)
    c = out - out.mean(axis=0)
    cov = c.T @ c / (len(out) - ddof)
    return float(np.linalg.norm(cov - np.eye(out.shape[1])) / np.sqrt(out.shape[1]))


# ---------------------------------------------------------------------------------------------

def bench_case(name, x, reps, ns_tol64, ns_tol32):
    n, F = x.shape
    x32 = x.astype(np.float32)
    ref = numpy_zca(x)
    alternatives = {"numpy eigh": numpy_zca, "scipy evr": scipy_zca("evr"), "scipy evd": scipy_zca("evd"),
                    "sklearn PCA": sklearn_pca}
    if kornia is not None:
        alternatives["kornia ZCA"] = kornia_zca
    ours = {"netdeconv f64": netdeconv_zca(),
            "netdeconv f32": netdeconv_zca(dtype=np.float32),
            f"netdeconv NS conv({ns_tol64:g}) f64": netdeconv_zca(netdeconv.IsqrtOptions.converged(ns_tol64)),
            f"netdeconv NS conv({ns_tol32:g}) f32": netdeconv_zca(netdeconv.IsqrtOptions.converged(ns_tol32),
                                                                  np.float32)}

    # The pieces, on the statistics of this x: where the time goes.
    mu = x.mean(axis=0)
    xc = x - mu
    cov = xc.T @ xc / n
    w = netdeconv.whiten(x)

    def numpy_covariance():
        c = x - mu
        return c.T @ c / n

    pieces = {"[np] x - mu, Xc^T Xc / n": numpy_covariance,
              "[np] eigh(Cov)": lambda: np.linalg.eigh(cov),
              "[np] (x - mu) D": lambda: (x - mu) @ w.D[0],
              "[nd] moments + covariance": lambda: netdeconv.covariance(netdeconv.moments(x), EPS),
              "[nd] inverse_sqrt exact": lambda: netdeconv.inverse_sqrt(cov + EPS * np.eye(F),
                                                                        netdeconv.IsqrtOptions.exact()),
              "[nd] apply_whitening": lambda: netdeconv.apply_whitening(x, w.mean, w.D)}

    # One untimed call each: warm-up, outputs for the errors, and reports.
    errors, white, notes = {}, {}, {}
    calls = {}
    for label, f in alternatives.items():
        out = f(x)
        errors[label] = None if label == "sklearn PCA" else relative_error(out, ref)
        white[label] = whiteness(out, ddof=1 if label == "sklearn PCA" else 0)
        calls[label] = lambda f=f: f(x)
    for label, (f, dtype) in ours.items():
        xin = x if dtype == np.float64 else x32
        try:
            out = f(xin)
        except netdeconv.NumericalError as e:
            notes[label] = f"NumericalError: {e}"
            continue
        errors[label] = relative_error(out, ref)
        white[label] = whiteness(out)
        calls[label] = lambda f=f, xin=xin: f(xin)
    for label, f in pieces.items():
        f()
        calls[label] = f

    ms = {k: 1e3 * v for k, v in interleaved(calls, reps).items()}
    scipy_best = min(("scipy evr", "scipy evd"), key=ms.get)
    fastest = min(("numpy eigh", scipy_best), key=ms.get)
    if kornia is not None and ms["kornia ZCA"] < ms[fastest]:
        fastest = "kornia ZCA"

    load = os.getloadavg()[0]
    print(f"\n== {name}: n = {n}, F = {F}, {reps} repetitions; faster scipy driver: {scipy_best}; "
          f"fastest ZCA alternative: {fastest}; load average {load:.2f}")
    print(f"{'method':36s} {'median ms':>10s} {'fastest alt / this':>18s} {'rel err':>9s} {'whiteness':>9s}")
    for label in calls:
        if label.startswith("["):
            continue
        err = "ref" if label == "numpy eigh" else ("-" if errors[label] is None else f"{errors[label]:.1e}")
        print(f"{label:36s} {ms[label]:10.3f} {ms[fastest] / ms[label]:18.2f} {err:>9s} {white[label]:9.1e}")
    for label, note in notes.items():
        print(f"{label:36s} {note}")
    print("where the time goes (the same rounds; GFLOP/s counted as 2 n F^2 for a covariance or a product):")
    for label in pieces:
        rate = "" if "eigh" in label or "inverse_sqrt" in label else f" {2 * n * F * F / ms[label] / 1e6:8.1f} GFLOP/s"
        print(f"  {label:34s} {ms[label]:10.3f} ms{rate}")
    print("RESULT " + json.dumps({"case": name, "n": n, "F": F, "reps": reps, "ms": ms, "rel_err": errors,
                                  "whiteness": white, "failed": notes, "scipy_driver": scipy_best,
                                  "fastest_alternative": fastest, "load_average": load,
                                  "ratio_fastest_alt_over_netdeconv_f64": ms[fastest] / ms["netdeconv f64"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no F = 1024 case")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every library")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="RGB image for the patch cases")
    args = parser.parse_args()

    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    netdeconv.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    print(f"CPU: {cpu_model()}, os.cpu_count() = {os.cpu_count()}, threads: {args.threads} "
          f"(netdeconv.get_num_threads() = {netdeconv.get_num_threads()})")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, sklearn {sklearn.__version__}, "
          f"kornia {kornia.__version__ if kornia else 'not installed'}")
    print(f"netdeconv.build_info() = {netdeconv.build_info()}")
    for lib in threadpoolctl.threadpool_info():
        print(f"threadpool: {lib['internal_api']} {lib.get('version')} {lib.get('threading_layer', '')} "
              f"{lib['num_threads']} threads: {lib['filepath']}")

    a = np.random.default_rng(2).standard_normal((2048, 2048))
    gemm = interleaved({"dgemm": lambda: a @ a}, 5)["dgemm"]
    print(f"OpenBLAS dgemm 2048^3 (numpy a @ a): {2 * 2048 ** 3 / gemm / 1e9:.1f} GFLOP/s")

    print("\n== call overhead: median ns of one netdeconv.whiten(x) call, float64")
    samples, calls = (5, 200) if args.quick else (15, 400)
    thread_counts = [args.threads] + ([1] if args.threads > 1 else [])
    for threads in thread_counts:
        netdeconv.set_num_threads(threads)
        for shape in ((8, 4), (32, 8)):
            py, cpp = call_overhead(shape, samples, calls)
            print(f"threads {threads}, x {shape}: Python {py / 1e3:.2f} us, C++ {cpp / 1e3:.2f} us, "
                  f"overhead {(py - cpp) / 1e3:.2f} us")
            print("RESULT " + json.dumps({"case": "overhead", "shape": shape, "threads": threads, "python_ns": py,
                                          "cpp_ns": cpp, "overhead_us": (py - cpp) / 1e3}))
    netdeconv.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    cases = image_patches(args.image) + [("sklearn digits", load_digits().data.astype(np.float64))]
    cases += [correlated(F, rng) for F in ((16, 64, 256) if args.quick else (16, 64, 256, 1024))]
    for name, x in cases:
        F = x.shape[1]
        reps = (5 if F <= 64 else 3) if args.quick else (21 if F <= 64 else 7 if F <= 256 else 5)
        bench_case(name, x, reps, ns_tol64=1e-6, ns_tol32=1e-4)

    # float32 cannot reach a 1e-6 residual: what netdeconv says when asked.
    x32 = cases[0][1].astype(np.float32)
    try:
        netdeconv.whiten(x32, isqrt=netdeconv.IsqrtOptions.converged(1e-6))
        print("\nfloat32, converged(1e-6) on the first case: converged")
    except netdeconv.NumericalError as e:
        print(f"\nfloat32, converged(1e-6) on the first case: NumericalError: {e}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
