"""The inbound gRPC listener: the agent's typed services, Agent, health and reflection.

Typed methods are served by generic handlers built from the compiled contract;
requests arrive as raw bytes so the contract step can reject malformed bytes
and unknown fields before anything else decodes them. Message size and
concurrency limits are grpc-core options (RESOURCE_EXHAUSTED beyond them).

Transport: plaintext when the sidecar has no identity. With one, `strict`
serves mutual TLS only on the public port (client certificates must chain to
the trust bundle; the certificate follows rotation handshake by handshake);
`permissive` serves TLS and plaintext on two loopback ports behind a front
that tells them apart by the first byte (sidecar/inbound/detect.py). A caller
refused in the handshake (plaintext to strict, a certificate of another CA,
an expired one) sees UNAVAILABLE; grpc offers no hook to count those.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from sidecar.config.bootstrap import Limits
from sidecar.config.snapshot import REPEATED_VALUE_SEPARATOR
from sidecar.contract import ContractSet, MethodContract
from sidecar.errors import MeshError, UnknownMethod
from sidecar.identity import SidecarIdentity
from sidecar.inbound.agent_service import AgentService
from sidecar.inbound.call import InboundCall
from sidecar.inbound.chain import InboundChain
from sidecar.inbound.detect import PermissiveFront
from sidecar.stats import SidecarStats
from sidecar.status import abort

# Manifests and reflection answers carry whole descriptor sets; they may exceed
# the agent's message limit, which applies to what callers send.
MAX_CONTROL_MESSAGE_BYTES = 64 * 1024 * 1024


def server_options(limits: Limits) -> list[tuple[str, Any]]:
    """Listener options: callers' messages are capped; answers are capped where they are produced.

    grpc-core cancels calls that arrived but were not yet picked up by the event loop beyond
    `max_pending_requests` (default 1,000 soft, 3,000 hard): a burst of new streams while the loop is busy
    would see CANCELLED. The concurrency limit already bounds admitted calls, so pending ones get the same room.
    """
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", limits.max_concurrent_calls),
        ("grpc.server.max_pending_requests_hard_limit", limits.max_concurrent_calls),
    ]


def channel_options(limits: Limits) -> list[tuple[str, Any]]:
    """Options of channels to other sidecars (requests capped, manifests may be large)."""
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", max(limits.max_message_bytes, MAX_CONTROL_MESSAGE_BYTES)),
    ]


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata by lower-case key; a key sent twice keeps all its values."""
    return headers_of((k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str))


def headers_of(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as matchers read them (REPEATED_VALUE_SEPARATOR joins the values of a repeated key)."""
    headers: dict[str, str] = {}
    for key, value in pairs:
        key = key.lower()
        headers[key] = f"{headers[key]}{REPEATED_VALUE_SEPARATOR}{value}" if key in headers else value
    return headers


class _TypedHandlers(grpc.GenericRpcHandler):
    """Routes "/pkg.Svc/Method" to the chain; built once per contract."""

    def __init__(self, contract: ContractSet, chain: InboundChain) -> None:
        self._chain = chain
        self._handlers = {path: self._handler(m) for path, m in contract.methods.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    def _handler(self, method: MethodContract) -> grpc.RpcMethodHandler:
        chain = self._chain

        def new_call(request: bytes, context: grpc.aio.ServicerContext) -> InboundCall:
            metadata = metadata_of(context)
            return InboundCall(
                method=method,
                body=request,
                metadata=metadata,
                time_remaining=context.time_remaining(),
                peer=chain.peer_of(context),
            )

        if method.client_streaming:

            async def unsupported(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                await abort(context, UnknownMethod(f"{method.path}: client-streaming skills are not supported"))
                raise AssertionError("unreachable")

            return grpc.stream_stream_rpc_method_handler(unsupported)

        if method.server_streaming:

            async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                try:
                    async for reply in chain.stream(new_call(request, context)):
                        yield reply.serialize()
                except MeshError as exc:
                    await abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                reply = await chain.unary(new_call(request, context))
            except MeshError as exc:
                await abort(context, exc)
                raise AssertionError("unreachable") from exc
            return reply.serialize()

        return grpc.unary_unary_rpc_method_handler(unary)


def reflection_pool(contract: ContractSet) -> descriptor_pool.DescriptorPool:
    """A pool with the agent's files plus Agent and Health, for server reflection."""
    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()

    def add(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        for file in files:
            if file.name not in seen:
                seen.add(file.name)
                pool.Add(file)

    add(contract.descriptor_set.file)
    for module_descriptor in (agent_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR):
        add(_with_dependencies(module_descriptor))
    return pool


def _with_dependencies(file: Any) -> list[descriptor_pb2.FileDescriptorProto]:
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    for dependency in file.dependencies:
        ordered += _with_dependencies(dependency)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    ordered.append(proto)
    return ordered


class InboundServer:
    """Owns the grpc.aio server of the inbound listener."""

    def __init__(
        self, *, contract: ContractSet, chain: InboundChain, agent_service: AgentService, limits: Limits
    ) -> None:
        self.health = health_aio.HealthServicer()
        self._contract = contract
        self._server = grpc.aio.server(
            options=server_options(limits), maximum_concurrent_rpcs=limits.max_concurrent_calls
        )
        self._server.add_generic_rpc_handlers((_TypedHandlers(contract, chain),))
        agent_pb2_grpc.add_AgentServicer_to_server(agent_service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [*contract.services, "agentmesh.v1.Agent", health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection(
            [*names, reflection.SERVICE_NAME], self._server, pool=reflection_pool(contract)
        )
        self._front: PermissiveFront | None = None

    async def start(
        self, address: str, *, identity: SidecarIdentity | None = None, stats: SidecarStats | None = None
    ) -> int:
        """Binds the public inbound address (plaintext, or mTLS per `identity.mode`); returns the bound port."""
        if identity is None:
            port = self._server.add_insecure_port(address)
        elif identity.mode == "strict":
            port = self._server.add_secure_port(address, identity.server_credentials())
        else:
            return await self._start_permissive(address, identity, stats)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        return port

    async def _start_permissive(self, address: str, identity: SidecarIdentity, stats: SidecarStats | None) -> int:
        if stats is None:
            raise ValueError("permissive mode needs the sidecar's stats (it counts plaintext connections)")
        tls_port = self._server.add_secure_port("127.0.0.1:0", identity.server_credentials())
        plaintext_port = self._server.add_insecure_port("127.0.0.1:0")
        if tls_port == 0 or plaintext_port == 0:
            raise OSError("cannot listen on loopback ports for permissive mode")
        await self._server.start()
        front = PermissiveFront(tls_port=tls_port, plaintext_port=plaintext_port, stats=stats)
        host, _, port = address.rpartition(":")
        try:
            bound = await front.start(host.strip("[]"), int(port))
        except OSError as exc:
            await self._server.stop(None)
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        self._front = front
        return bound

    async def set_serving(self, serving: bool) -> None:
        """grpc.health.v1 follows the agent's probe for "" and every agent service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._contract.services):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        if self._front is not None:
            self._front.stop_accepting()
        await self._server.stop(grace)
        if self._front is not None:
            await self._front.close()
