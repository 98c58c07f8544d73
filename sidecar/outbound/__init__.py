"""Outbound (egress) path: the agent's calls to other agents.

listener (gRPC :15001 | HTTP/JSON :15080) → router (agent or service)
→ target sidecar's inbound listener
"""
