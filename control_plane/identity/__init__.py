"""The control plane's certificate authority and the join tokens that let a workload enroll with it.

`ca.py` signs workload certificates (X.509 SVIDs) for SPIFFE IDs and checks
certificates presented for renewal; `join_tokens.py` keeps the join tokens in
the control plane's SQLite file; `ledger.py` counts what was issued. The
Identity gRPC service (control_plane/api/identity.py) and the join-token admin
RPCs (control_plane/api/tokens.py) sit on top of them.
"""
