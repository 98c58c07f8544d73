"""Telemetry shared by the sidecar, the control plane and the CLI.

`logs` owns the one structured JSON log format and the access log.
"""

from agentmesh.telemetry.logs import (
    ACCESS_LOGGER,
    AccessRoute,
    JsonFormatter,
    configure_logging,
    flush_access_log,
    log_access,
)

__all__ = ["ACCESS_LOGGER", "AccessRoute", "JsonFormatter", "configure_logging", "flush_access_log", "log_access"]
