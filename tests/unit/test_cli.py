"""Command-line parsing: overrides may stand anywhere among the options."""
from __future__ import annotations

import pytest

from realflow.apps import cli, experiments


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


def test_place_option_parses_roles_onto_workers(monkeypatch):
    args = _parsed(monkeypatch, ["run", "ppo", "--workers", "3", "--place", "actor=0,1", "--place", "critic=2"])
    assert experiments.parse_placements(args.place) == {"actor": [0, 1], "critic": [2]}


@pytest.mark.parametrize("place,words", [
    ("actor", "expected ROLE=W[,W...]"),
    ("actor=", "expected ROLE=W[,W...]"),
    ("=0", "expected ROLE=W[,W...]"),
    ("actor=0,x", "expected ROLE=W[,W...]"),
])
def test_bad_place_is_one_clear_line(capsys, tmp_path, place, words):
    assert cli.main(["run", "sft", "--workers", "2", "--place", place, f"run.fileroot={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and place in err[0]


def test_place_without_workers_and_unknown_role_are_errors(capsys, tmp_path):
    assert cli.main(["run", "sft", "--place", "default=0", f"run.fileroot={tmp_path}"]) == 2
    assert "needs --workers N" in capsys.readouterr().err
    assert cli.main(["run", "sft", "--workers", "1", "--place", "actor=0", f"run.fileroot={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown roles ['actor']" in err and "roles: ['default']" in err
