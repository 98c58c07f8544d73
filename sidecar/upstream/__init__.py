"""Upstream adapters: the last step of the inbound chain, calling the untouched agent.

`adapter_for(upstream)` picks the adapter for the agent's protocol:
`HttpJsonAdapter` (HTTP/JSON, transcoded per `google.api.http` or the Connect
convention) or `GrpcPassthroughAdapter` (validated bytes forwarded as is).
"""

from sidecar.upstream.base import Payload, UpstreamAdapter, UpstreamCall, adapter_for

__all__ = ["Payload", "UpstreamAdapter", "UpstreamCall", "adapter_for"]
