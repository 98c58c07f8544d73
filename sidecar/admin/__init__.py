"""The sidecar's admin endpoint: health, readiness, metrics, config dump and discovery.

`AdminServer` (server.py) serves them over HTTP; `agent_card` (agent_card.py)
renders the capability manifest as an A2A Agent Card.
"""

from sidecar.admin.agent_card import agent_card
from sidecar.admin.server import AdminServer

__all__ = ["AdminServer", "agent_card"]
