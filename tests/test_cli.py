"""experiments/sweep.py's command line: the study's flags derived from SweepConfig's fields (jaxreg.cli),
each shown once in --help, none overriding a preset unless given; flag errors are one line and exit 2.
Everything in-process (main(argv)); the process boundary is tested in tests/test_sweep.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from jaxreg import cli
from jaxreg.config import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sweep_cli_flags", ROOT / "experiments" / "sweep.py")
CLI = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CLI)
OPTION_FIELDS = [f.name for f in cli.option_fields()]
NOT_OPTIONS = ("name", "variants", "description", "axis")  # what a preset alone decides (--variants selects)
# A preset whose every option field differs from SweepConfig's default.
OWN_PRESET = '''"""python experiments/sweep.py --preset own.py"""
from jaxreg.sweep import SweepConfig
from jaxreg.variants import VariantSpec


def get_config():
    return SweepConfig(
        name="own", variants=(VariantSpec("a"), VariantSpec("b", l2=1e-3)), epochs=3, seeds=2, batch_size=64,
        loss="logits", product="dense", variant_loop="map", validation="test", holdout_size=123, synthetic=True,
        devices=2, placement="shard", divergence_threshold=5.0, patience=2,
    )
'''


@pytest.fixture
def own_preset(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("JAXREG_DATA", raising=False)
    path = tmp_path / "own.py"
    path.write_text(OWN_PRESET)
    return str(path)


def test_the_option_fields_are_the_study_settings():
    assert set(OPTION_FIELDS) == {f.name for f in dataclasses.fields(SweepConfig)} - set(NOT_OPTIONS)


def test_every_option_field_is_in_help_once_with_its_help():
    text = CLI.build_parser().format_help()
    for field in cli.option_fields():
        flag = cli.flag(field)
        assert len(re.findall(rf"^\s+{flag}\b", text, re.MULTILINE)) == 1, flag  # one entry (besides usage)
        first_words = " ".join(field.metadata["option"]["help"].split()[:4])
        assert first_words in " ".join(text.split()), flag
    for name in NOT_OPTIONS:
        assert f"--{name} " not in text.replace("--variants VARIANTS", "")
    assert "(default 512)" in " ".join(text.split())  # SweepConfig's default, shown in the help


def test_option_fields_default_to_not_given():
    parser = CLI.build_parser()
    args = CLI.parse_args([])
    for name in OPTION_FIELDS:
        assert parser.get_default(name) is None and getattr(args, name) is None, name


def test_a_flag_not_given_keeps_the_preset_value(own_preset):
    preset = CLI._presets().load(own_preset)
    assert all(
        getattr(preset, f.name) != f.default for f in cli.option_fields() if f.name not in ("data", "validation")
    )
    assert CLI.build_config(CLI.parse_args(["--preset", own_preset])) == preset
    given = CLI.build_config(CLI.parse_args(["--preset", own_preset, "--epochs", "7", "--loss", "keras"]))
    assert given == preset.replace(epochs=7, loss="keras")


def test_data_flags(own_preset, tmp_path, monkeypatch):
    """--data: an absolute path (or the word tfds); env JAXREG_DATA when absent; --synthetic wins over both."""
    monkeypatch.chdir(tmp_path)
    build = lambda *flags: CLI.build_config(CLI.parse_args(["--preset", own_preset, *flags]))  # noqa: E731
    assert build("--synthetic").data is None
    with pytest.raises(CLI._presets().SweepError, match="cannot be combined with synthetic"):
        build("--data", "imdb.tar.gz")  # the preset is synthetic
    Path(own_preset).write_text(OWN_PRESET.replace("synthetic=True", "synthetic=False"))
    assert build("--data", "imdb.tar.gz").data == str(tmp_path / "imdb.tar.gz")
    assert build("--data", "tfds").data == "tfds"
    monkeypatch.setenv("JAXREG_DATA", "env.tar.gz")
    assert build().data == str(tmp_path / "env.tar.gz")
    assert build("--synthetic").synthetic and build("--synthetic").data is None


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--divergence-threshold", "big"], "argument --divergence-threshold: invalid float value: 'big'"),
        (["--product", "fast"], "argument --product: invalid choice: 'fast'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--coordinator", "localhost:1", "--out", "x"], "--coordinator needs --num-processes, --process-id too"),
    ],
)
def test_flag_errors_are_one_line_and_exit_2(argv, fragment, capsys):
    code = CLI.main(["--synthetic", *argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("sweep.py: error: ") and lines[0].endswith(" (see --help)") and fragment in lines[0]
    assert captured.out == ""


def test_help_in_process_returns_0(capsys):
    assert CLI.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sweep.py") and "study options" in out and "many processes and hosts" in out
