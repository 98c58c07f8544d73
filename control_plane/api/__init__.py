"""The control plane's gRPC services besides ADS: sidecar registration and the admin API.

- `registration`: `RegistrationService` (agentmesh.v1.Registration), fed by sidecars.
- `admin`: `AdminService` (agentmesh.v1.ControlPlane), what the `agentmesh` CLI calls.
- `auth`: `TokenAuthInterceptor`, the bearer token the admin API requires.
- `status`: agents and proxy sync state as the admin API reports them.
- `check`: `check_mesh`, the lint behind `agentmesh check` (pure).

This file imports nothing, so importing one service never loads the others.
"""
