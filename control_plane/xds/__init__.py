"""xDS serving: snapshots, the per-node snapshot cache, ACK/NACK tracking and the ADS server.

Translation (`control_plane/translate/`) produces `Snapshot`s; this package
only serves them. Modules, from data to wire:

- `snapshot`: `Snapshot` (immutable resources per type URL), type URL constants,
  `consistency_errors()`. Pure: safe for the translator to import.
- `cache`: `SnapshotCache` (`set_snapshot`, `set_default`, per-type versions, watches). Pure.
- `ack_tracker`: `AckTracker`, `SyncStatus` (per node and type: sent, ACKed, NACKed). Pure.
- `ads_server`: `AggregatedDiscoveryService` (grpc.aio, state-of-the-world ADS).
- `server`: `serve_xds(cache, tracker, address=...)`.

This file imports nothing, so importing `control_plane.xds.snapshot` never pulls in grpc.
"""
