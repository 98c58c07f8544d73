"""agentmesh.v1.Agent: the manifest and the generic Invoke for callers without stubs.

`Invoke` decodes its Struct or Any payload into the skill's request type and
sends it down the same chain as a typed call, so it gets the same contract
checks, metrics and errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import json_format, struct_pb2

from agentmesh.v1 import agent_pb2, agent_pb2_grpc, manifest_pb2
from sidecar.contract import ContractSet, MethodContract
from sidecar.errors import ContractViolation, MeshError, UnknownMethod
from sidecar.inbound.call import InboundCall, Reply
from sidecar.inbound.chain import InboundChain
from sidecar.status import abort


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, *, contract: ContractSet, chain: InboundChain, manifest: Callable[[], manifest_pb2.Manifest]):
        self._contract = contract
        self._chain = chain
        self._manifest = manifest

    async def GetManifest(
        self, request: agent_pb2.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> manifest_pb2.Manifest:
        return self._manifest()

    async def Invoke(
        self, request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.InvokeResponse:
        try:
            call = self._call(request, context, streaming=False)
            return self._response(request, await self._chain.unary(call))
        except MeshError as exc:
            await abort(context, exc)
            raise AssertionError("unreachable") from exc

    async def InvokeStream(
        self, request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.InvokeResponse]:
        try:
            call = self._call(request, context, streaming=True)
            async for reply in self._chain.stream(call):
                yield self._response(request, reply)
        except MeshError as exc:
            await abort(context, exc)

    def _call(
        self, request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext, *, streaming: bool
    ) -> InboundCall:
        method = self._contract.method(request.skill) if request.skill else None
        if method is None:
            raise UnknownMethod("InvokeRequest.skill is empty: name a skill as package.Service/Method")
        if method.server_streaming != streaming:
            rpc = "InvokeStream" if method.server_streaming else "Invoke"
            raise UnknownMethod(f"{method.path} is {'server-streaming' if streaming is False else 'unary'}; call {rpc}")
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return InboundCall(
            method=method,
            body=self._body(method, request),
            metadata=metadata,
            time_remaining=context.time_remaining(),
            peer=self._chain.peer_of(context),
        )

    @staticmethod
    def _body(method: MethodContract, request: agent_pb2.InvokeRequest) -> bytes | dict[str, object]:
        kind = request.WhichOneof("payload")
        if kind == "json":
            return json_format.MessageToDict(request.json)
        if kind == "any":
            expected = method.input.full_name
            actual = request.any.type_url.rpartition("/")[2]
            if actual != expected:
                raise ContractViolation(
                    f"payload type {actual!r} is not the input type of {method.path} ({expected})",
                    side="request",
                    reason="wrong_type",
                )
            return request.any.value
        return b""  # no payload: the empty request message, still checked

    @staticmethod
    def _response(request: agent_pb2.InvokeRequest, reply: Reply) -> agent_pb2.InvokeResponse:
        if request.WhichOneof("payload") == "any":
            response = agent_pb2.InvokeResponse()
            response.any.Pack(reply.message)
            return response
        data = struct_pb2.Struct()
        data.update(json_format.MessageToDict(reply.message, preserving_proto_field_name=True))
        return agent_pb2.InvokeResponse(json=data)
