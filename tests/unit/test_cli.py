"""Every command of `rethinktiny` exists and prints its help (exit 0)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from rethinktiny.cli import COMMANDS, build_parser, main

from tests.conftest import REPO


def _subcommands(group: str) -> list[str]:
    """The command names of a group, read from its parser (a group without commands gives [])."""
    group_parser = build_parser(group)._subparsers._group_actions[0].choices[group]
    return [name for action in group_parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def _every_command() -> list[list[str]]:
    commands = []
    for group in COMMANDS:
        commands.append([group])
        commands.extend([group, name] for name in _subcommands(group))
    return commands


def test_the_table_lists_every_group_module():
    # a group module (one with `configure(parser)`) under rethinktiny/cli/ that the table forgets is
    # a command nobody can call; the only other module holds the rank entry points' flags
    import importlib
    import pkgutil

    import rethinktiny.cli

    modules = {info.name for info in pkgutil.iter_modules(rethinktiny.cli.__path__)}
    groups = {name for name in modules if hasattr(importlib.import_module(f"rethinktiny.cli.{name}"), "configure")}
    assert groups == {module.__name__.rsplit(".", 1)[1] for module, _help in COMMANDS.values()}
    assert modules - groups == {"ranks"}


@pytest.mark.parametrize("words", _every_command(), ids=" ".join)
def test_help_of_every_command_exits_0(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rethinktiny " + " ".join(words))


def test_groups_have_their_commands():
    assert {"count", "merge", "prune", "inspect"} <= set(_subcommands("vocab"))
    assert _subcommands("train") == []  # train is one command: start_finetune.py's flags


def test_console_script_and_start_finetune_help():
    for command in ([sys.executable, "-m", "rethinktiny", "--help"],
                    [sys.executable, str(REPO / "start_finetune.py"), "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "--help" in result.stdout and "Traceback" not in result.stderr


def test_train_is_the_launcher(capsys):
    # `rethinktiny train` and start_finetune.py build the same launch command
    config = str(REPO / "configs" / "tiny_cpu.py")
    flags = ["--config", config, "--dry-run", "--master-port", "29999", "--nproc-per-node", "2"]
    assert main(["train", *flags]) == 0
    from_cli = capsys.readouterr().out
    script = subprocess.run([sys.executable, str(REPO / "start_finetune.py"), *flags], capture_output=True, text=True,
                            timeout=120, check=False)
    assert script.stdout == from_cli and "torch.distributed.run" in from_cli


def test_train_bad_config_is_one_error_line(capsys):
    assert main(["train", "--config", str(REPO / "configs" / "nope.py")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {REPO / 'configs' / 'nope.py'}: config file not found"


def test_demo_reads_only_the_sample_it_is_given(tmp_path):
    # the report module takes its inputs as arguments (no import back into the demo)
    check = "import sys, rethinktiny.demo.report; sys.exit('rethinktiny.demo.pipeline' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], timeout=120, check=False).returncode == 0
    assert main(["demo", "run", "--sample", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
