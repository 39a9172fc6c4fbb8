# SPDX-License-Identifier: MIT
"""The README's Python examples run as written."""
import re

from conftest import ROOT


def test_readme_python_blocks_run():
    with open(f"{ROOT}/README.md", encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README.md has no python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
