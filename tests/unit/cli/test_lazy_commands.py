"""The `agentmesh` group imports a command's module only when that command is used."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from agentmesh.cli.main import COMMANDS, cli


def test_every_command_is_listed_and_loads() -> None:
    with click.Context(cli) as ctx:
        names = cli.list_commands(ctx)
        loaded = {name: cli.get_command(ctx, name) for name in names}

    assert names == sorted(COMMANDS)
    assert all(isinstance(command, click.Command) for command in loaded.values())
    assert loaded["inject"] is not None and loaded["inject"].name == "inject"


def test_an_unknown_command_is_none() -> None:
    with click.Context(cli) as ctx:
        assert cli.get_command(ctx, "warp") is None


def test_the_sidecar_command_loads_no_control_plane_code() -> None:
    script = (
        "import json, sys, click\n"
        "from agentmesh.cli.main import cli\n"
        "with click.Context(cli) as ctx:\n"
        "    cli.get_command(ctx, 'sidecar')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)

    loaded = set(json.loads(done.stdout))
    assert "agentmesh" in loaded
    assert not loaded & {"control_plane", "cryptography", "sqlite3"}
