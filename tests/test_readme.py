"""The README's examples run as written: every Python block, and the command the run-folder examples read."""

import importlib.util
import os
import re
import shlex
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(title: str) -> str:
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(title: str, language: str = "python") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.DOTALL)


def run_block(code: str) -> dict:
    scope = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_every_python_block_is_run_here():
    """A new example in a new section must get a test: the sections with Python blocks are these."""
    titles = re.findall(r"^## (.+)$", README.read_text(), flags=re.MULTILINE)
    with_python = [t for t in titles if code_blocks(t)]
    assert with_python == ["The run folder", "Your own data and model", "Reusing the training step"]


def test_run_folder_examples_run(tmp_path, monkeypatch, capsys):
    """The demo command of "The run folder" (in-process), then its load_run and load_params examples in that folder."""
    (command,) = [
        line for block in code_blocks("The run folder", "bash") for line in block.splitlines() if line.strip()
    ]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "experiments/sweep.py"], command
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the CLI may set it; restored after
    spec = importlib.util.spec_from_file_location("sweep_cli", ROOT / argv[1])
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([*argv[2:], "--no-progress", "--no-compile-cache"]) == 0
    capsys.readouterr()

    read_run, use_params = code_blocks("The run folder")
    run_block(read_run)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "finished {'original': 3, 'smaller': 3}", lines  # what the comment in the README says

    scope = run_block(use_params)
    printed, predicted = capsys.readouterr().out.splitlines()
    accuracy = float(re.fullmatch(r"validation accuracy: ([\d.]+)", printed)[1])
    probabilities = [float(p) for p in re.fullmatch(r"\[\s*([\d.e-]+)\s+([\d.e-]+)\s*\]", predicted).groups()]
    expected = scope["predict"](
        tmp_path / "runs" / "demo", ["w3 w17 w52", "w900"], variant="smaller", seed=0, which="best"
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)  # as printed: 8 digits
    assert len(set(probabilities)) == 2 and all(0 < p < 1 for p in probabilities)
    assert scope["logits"].shape == (len(scope["validation"].y),)
    from jaxreg import load_run

    reported = load_run(tmp_path / "runs" / "demo").histories["smaller"]["val_accuracy"][0]
    # the best epoch's accuracy as the run measured it, to 2 of the 1,000 reviews (a dense product against the
    # run's sparse one may round a logit near 0 the other way)
    assert np.isclose(reported, accuracy, atol=2.5e-3).any(), (accuracy, reported)


def test_own_data_and_model_example_runs(capsys):
    (own_data,) = code_blocks("Your own data and model")
    scope = run_block(own_data)
    printed = capsys.readouterr().out
    assert "val acc @ best" in printed and "wide_dropout" in printed
    result = scope["result"]
    assert result.task.kind == "multiclass" and result.task.num_classes == 3
    assert [b["variants"] for b in result.buckets] == [["mlp", "mlp_l2"], ["wide", "wide_dropout"]]
    outputs = scope["Wide"]().apply(scope["params"], scope["x"][:5], 0.0, None)
    assert outputs.shape == (5, 3)


def test_train_step_example_runs(capsys):
    (train_step,) = code_blocks("Reusing the training step")
    run_block(train_step)
    printed = capsys.readouterr().out
    match = re.search(r"loss ([\d.]+) = data ([\d.]+) \+ penalty ([\d.]+)", printed)
    assert match, printed
    loss, data_loss, penalty = map(float, match.groups())
    assert penalty > 0 and abs(loss - (data_loss + penalty)) < 2e-4
