"""Command-line parsing: overrides may stand anywhere among the options."""
from __future__ import annotations

import pytest

from realflow.apps import cli


def _parsed(monkeypatch, argv):
    seen = {}
    monkeypatch.setitem(cli.COMMANDS, "run", (*cli.COMMANDS["run"][:2], lambda a: seen.setdefault("args", a) and 0))
    assert cli.main(argv) == 0
    return seen["args"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "sft", "--workers", "2", "n_seqs=8", "run.n_steps=1"],
        ["run", "sft", "n_seqs=8", "--workers", "2", "run.n_steps=1"],
        ["run", "sft", "n_seqs=8", "run.n_steps=1", "--workers", "2"],
    ],
)
def test_overrides_anywhere(monkeypatch, argv):
    args = _parsed(monkeypatch, argv)
    assert args.workers == 2 and args.overrides == ["n_seqs=8", "run.n_steps=1"]


def test_stray_argument_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "sft", "--workers", "2", "oops"])
    assert "unrecognized arguments: oops" in capsys.readouterr().err


def test_bad_override_is_one_clear_line(capsys):
    assert cli.main(["run", "sft", "model.optimizer.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key 'model.optimizer.lrr'" in err[0]
