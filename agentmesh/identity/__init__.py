"""Workload identity: SPIFFE IDs, keys, certificates and their rotation, shared by sidecars and identity agents."""
