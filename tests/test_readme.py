"""The README's quickstart runs as written."""
import os
import re

import snnsparse as ss

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_starts_with_the_two_commands():
    text = open(README).read()
    block = re.search(r"```\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_quickstart_runs():
    text = open(README).read()
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    model, report = scope["model"], scope["report"]
    assert isinstance(scope["net"][0], ss.nn.SpikeLinear)
    assert report.total.sop <= report.total.synops
    assert all(m.weight_mask.shape == m.weight.shape for m in model.modules() if hasattr(m, "weight_mask"))
