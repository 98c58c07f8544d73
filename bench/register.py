"""Registers agents that have no sidecar with a control plane: `python -m bench.register ...`.

The Envoy paths of the hop benchmark route to the bare backend (or to a
second Envoy), so something must announce those addresses the way a sidecar
would. This process runs the sidecar's own `Registrar` (one Register stream
per `--agent name=host:port`) with a manifest built from bench.proto, always
healthy, and prints `registered <n>` once the control plane has accepted all.
It stays until SIGTERM; the instances are deregistered when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agentmesh.protoc import compile_descriptor_set
from bench.backend import PROTO, SERVICE, until_signalled
from sidecar.config.bootstrap import AgentIdentity
from sidecar.config.registration import Registrar
from sidecar.contract import ContractSet
from sidecar.contract.manifest import build_manifest

DEFAULT_VERSION = "v1"
DEFAULT_TEAM = "bench"
REGISTER_TIMEOUT_S = 30.0


def _agent(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep or not name or ":" not in address:
        raise argparse.ArgumentTypeError(f"expected name=host:port, got {text!r}")
    return name, address


async def run(control_plane: str, agents: list[tuple[str, str]]) -> None:
    contract = ContractSet.compile(compile_descriptor_set([PROTO]), services=(SERVICE,))
    registrars = [
        Registrar(
            control_plane=control_plane,
            manifest=build_manifest(contract, AgentIdentity(name=name, version=DEFAULT_VERSION, team=DEFAULT_TEAM)),
            address=address,
            admin_address="",
            zone="",
            healthy=lambda: True,
        )
        for name, address in agents
    ]
    tasks = [asyncio.ensure_future(r.run()) for r in registrars]
    await asyncio.wait_for(asyncio.gather(*(r.registered.wait() for r in registrars)), REGISTER_TIMEOUT_S)
    print(f"registered {len(registrars)}", flush=True)
    await until_signalled()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Register sidecar-less agents with a control plane.")
    parser.add_argument("--control-plane", required=True, help="host:port of the control plane's gRPC listener")
    parser.add_argument("--agent", type=_agent, action="append", required=True, help="name=host:port, repeatable")
    args = parser.parse_args(argv)
    asyncio.run(run(args.control_plane, args.agent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
