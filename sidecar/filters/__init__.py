"""Inbound filters, one module per step of the chain (tracing, access, usage, ...).

Each filter is compiled from config once (`XConfig.from_proto` or similar,
frozen and validated) and runs per call as one small step that either lets
the call through or raises a domain error from sidecar.errors; the listener
turns that error into a status. A factory returns None when a filter has
nothing to do, so an unconfigured step costs nothing.
"""
