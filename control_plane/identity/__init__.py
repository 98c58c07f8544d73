"""The control plane's certificate authority and the join tokens that let a workload enroll with it.

`ca.py` signs workload certificates (X.509 SVIDs) for SPIFFE IDs and checks
certificates presented for renewal; `csr.py` checks what a workload sends it
(CSR, key, proof of possession); `issuers.py` makes, stores and loads the CA's
own certificates (root, or intermediate under a user root); `server_tls.py`
keeps the control plane's own TLS certificate; `join_tokens.py` keeps the join
tokens in the control plane's SQLite file; `ledger.py` counts what was issued. The
Identity gRPC service (control_plane/api/identity.py) and the join-token admin
RPCs (control_plane/api/tokens.py) sit on top of them.
"""
