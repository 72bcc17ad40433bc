"""The README's code examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> list[str]:
    section = README.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_own_data_and_model_examples_run(capsys):
    own_data, train_step = section_code("Your own data and model")
    scope = {"__name__": "readme_example"}
    exec(compile(own_data, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "val acc @ best" in printed and "wide_dropout" in printed
    result = scope["result"]
    assert result.task.kind == "multiclass" and result.task.num_classes == 3
    assert [b["variants"] for b in result.buckets] == [["mlp", "mlp_l2"], ["wide", "wide_dropout"]]
    outputs = scope["Wide"]().apply(scope["params"], scope["x"][:5], 0.0, None)
    assert outputs.shape == (5, 3)

    exec(compile(train_step, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    match = re.search(r"loss ([\d.]+) = data ([\d.]+) \+ penalty ([\d.]+)", printed)
    assert match, printed
    loss, data_loss, penalty = map(float, match.groups())
    assert penalty > 0 and abs(loss - (data_loss + penalty)) < 2e-4
