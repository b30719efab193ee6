"""Config: file, environment and flags, in that order of precedence; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee import config
from rbee.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path) -> None:
    loaded = config.load(tmp_path / "missing.toml", env={})
    assert loaded.queen.port == 7833
    assert loaded.keeper.queen_url == "http://127.0.0.1:7833"


def test_round_trip_through_set_value(tmp_path: Path) -> None:
    path = tmp_path / "rbee" / "config.toml"
    assert config.set_value(path, "queen.port", "9000") == 9000
    assert config.set_value(path, "queen.local_hive", "false") is False
    assert config.set_value(path, "keeper.queen_url", "http://gpu1:7833") == "http://gpu1:7833"
    loaded = config.load(path, env={})
    assert loaded.queen.port == 9000
    assert loaded.queen.local_hive is False
    assert loaded.keeper.queen_url == "http://gpu1:7833"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[queen]\nport = 9000\nqueue_size = 10\n")
    loaded = config.load(path, env={"RBEE_QUEEN_PORT": "9100"})
    assert loaded.queen.port == 9100
    assert loaded.queen.queue_size == 10
    flagged = config.override(loaded.queen, port=9200, queue_size=None)
    assert flagged.port == 9200
    assert flagged.queue_size == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[queen]\nport = 1.5\n", "queen.port: expected int"),
        ("[queen]\nnope = 1\n", "unknown key queen.nope"),
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("queen = 3\n", "queen must be a [queen] table"),
        ("[queen\n", "line 1"),
    ],
)
def test_malformed_file_names_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r".*") as info:
        config.load(path, env={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RBEE_WORKER_SLOTS"):
        config.load(tmp_path / "none.toml", env={"RBEE_WORKER_SLOTS": "many"})


def test_set_value_refuses_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        config.set_value(tmp_path / "c.toml", "queen.colour", "blue")
    assert not (tmp_path / "c.toml").exists()
