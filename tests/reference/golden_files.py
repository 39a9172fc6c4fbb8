# SPDX-License-Identifier: MIT
"""The golden-file text format and its --check, shared by generate_goldens.py and
generate_sequence_goldens.py (read by tests/golden_file.hpp):

    key value            header lines (the case's parameters)
    array NAME COUNT     then COUNT numbers, one per line

check_all() compares a goldens directory with what a generator builds now: inputs exactly,
outputs to a relative error ||got - ref|| / ||ref|| <= rtol."""
import math
import os
import sys


def parse(text):
    """(header [(key, value)], arrays [(name, [floats])]) of a golden file's text."""
    tokens = text.split()
    header, arrays, i = [], [], 0
    while i < len(tokens):
        if tokens[i] == "array":
            name, count = tokens[i + 1], int(tokens[i + 2])
            values = [float(v) for v in tokens[i + 3:i + 3 + count]]
            if len(values) != count:
                raise ValueError("array %s: %d values expected, the file ends after %d" % (name, count, len(values)))
            arrays.append((name, values))
            i += 3 + count
        elif i + 1 < len(tokens):
            header.append((tokens[i], tokens[i + 1]))
            i += 2
        else:
            raise ValueError("header key %r without a value" % tokens[i])
    return header, arrays


def rel_err(a, b):
    num = math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))
    den = math.sqrt(sum(q * q for q in b))
    return num / den if den > 0 else num


def check_all(directory, cases, expected, label, rtol):
    """Exit status of comparing directory with the generator: expected(case) returns
    (header, arrays, inputs), arrays as [(name, [floats])] and inputs the number of leading arrays
    that are inputs. Prints the problems, or one OK line with the largest output error."""
    if not os.path.isdir(directory):
        print("%s check FAILED: directory %s is missing (run %s)" % (label, directory, sys.argv[0]))
        return 1
    problems = []
    on_disk = {f[:-4] for f in os.listdir(directory) if f.endswith(".txt")}
    for name in sorted(on_disk - {case["name"] for case in cases}):
        problems.append("%s: file on disk but no such case in the generator" % name)
    worst = 0.0
    for case in cases:
        name = case["name"]
        if name not in on_disk:
            problems.append("%s: case missing on disk" % name)
            continue
        with open(os.path.join(directory, name + ".txt")) as f:
            try:
                got_header, got = parse(f.read())
            except ValueError as e:
                problems.append("%s: cannot parse: %s" % (name, e))
                continue
        header, arrays, inputs = expected(case)
        if got_header != header:
            problems.append("%s: header differs: file %s, generator %s" % (name, got_header, header))
        if [(n, len(v)) for n, v in got] != [(n, len(v)) for n, v in arrays]:
            problems.append("%s: arrays differ in names/sizes: file %s, generator %s" % (
                name, [(n, len(v)) for n, v in got], [(n, len(v)) for n, v in arrays]))
            continue
        for i, ((aname, values), (_, ref)) in enumerate(zip(got, arrays)):
            if i < inputs:
                if values != ref:
                    bad = next(j for j, (p, q) in enumerate(zip(values, ref)) if p != q)
                    problems.append("%s: input %s differs at %d: file %r, generator %r" % (
                        name, aname, bad, values[bad], ref[bad]))
            else:
                err = rel_err(values, ref)
                worst = max(worst, err)
                if not err <= rtol:
                    problems.append("%s: %s relative error %.3g > %g" % (name, aname, err, rtol))
    if problems:
        print("%s check FAILED (%d problem(s)); regenerate with %s if the change is intended:" % (
            label, len(problems), os.path.basename(sys.argv[0])))
        for p in problems:
            print("  " + p)
        return 1
    print("%s check OK: %d cases, largest output relative error %.3g (tolerance %g)" % (label, len(cases), worst, rtol))
    return 0
