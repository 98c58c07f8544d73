"""Who may change the mesh: admin API roles, credentials and team scope.

`roles` names the roles and the authenticated `Caller`; `credentials` keeps
the admin API's bearer tokens (hashed, in the control plane's SQLite file);
`scope` decides which policy changes a team-scoped operator may make. The
gRPC side (authentication, the per-RPC role table, status codes) is
control_plane/api/auth.py. Import from the modules: the CLI needs only
`roles`, which imports nothing heavy.
"""
