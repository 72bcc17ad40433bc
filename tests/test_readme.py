"""The README's code examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_reuse_train_step_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Reuse the train step", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    match = re.search(r"loss ([\d.]+) = data ([\d.]+) \+ penalty ([\d.]+)", printed)
    assert match, printed
    loss, data_loss, penalty = map(float, match.groups())
    assert penalty > 0 and abs(loss - (data_loss + penalty)) < 2e-4
