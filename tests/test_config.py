"""Option parsing: YAML defaults, command-line overrides, and rejected typos."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lungsound_ssl.config import parse_config, run_cli


@dataclass
class Options:
    learning_rate: float = field(default=0.1, metadata={"help": "step size"})
    n_folds: int = field(default=5, metadata={"help": "folds"})


def test_yaml_then_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("learning_rate: 0.5\nn_folds: 3\n")
    (options,) = parse_config((Options,), ["--config", str(tmp_path / "c.yaml"), "--n_folds", "4"])
    assert options.learning_rate == 0.5
    assert options.n_folds == 4


def test_unknown_yaml_key_rejected(tmp_path):
    (tmp_path / "c.yaml").write_text("learning_rat: 0.5\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_config((Options,), ["--config", str(tmp_path / "c.yaml")])


def test_abbreviated_option_rejected():
    # argparse accepts unambiguous prefixes by default; a typo must not pass as one.
    with pytest.raises(ValueError, match="--learning_rat"):
        parse_config((Options,), ["--learning_rat", "0.5"])


def test_run_cli_turns_input_errors_into_status_2(caplog):
    def failing(argv):
        raise FileNotFoundError("data folder not found: /nope")

    assert run_cli(failing, []) == 2
    assert "data folder not found: /nope" in caplog.text
    assert run_cli(lambda argv: 0, []) == 0
