#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Checks that README.md holds, verbatim, every snippet that the given test files run.

A snippet is the lines between "// README snippet begin" and "// README snippet end" in the test,
dedented by the marker's indentation; README.md must contain them as consecutive lines of one of
its ```cpp blocks. Usage: readme_snippets.py README.md TEST_FILE...
"""
import re
import sys


def snippets(test_source):
    out, current, indent = [], None, 0
    for line in test_source.splitlines():
        if line.strip() == "// README snippet begin":
            current, indent = [], len(line) - len(line.lstrip())
        elif line.strip() == "// README snippet end":
            out.append(current)
            current = None
        elif current is not None:
            current.append(line[indent:] if line.strip() else "")
    if current is not None:
        raise SystemExit("readme_snippets: a snippet has no end marker")
    return out


def main():
    readme_path, test_paths = sys.argv[1], sys.argv[2:]
    readme = open(readme_path, encoding="utf-8").read()
    blocks = [b.splitlines() for b in re.findall(r"```cpp\n(.*?)```", readme, flags=re.S)]
    missing = total = 0
    for test_path in test_paths:
        found = snippets(open(test_path, encoding="utf-8").read())
        if not found:
            raise SystemExit(f"readme_snippets: no snippets in {test_path}")
        total += len(found)
        for snippet in found:
            if not any(snippet == block[i:i + len(snippet)] for block in blocks for i in range(len(block))):
                missing += 1
                print(f"README.md lacks this snippet of {test_path}:\n  " + "\n  ".join(snippet))
    print(f"{total - missing} of {total} snippets found in {readme_path}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
