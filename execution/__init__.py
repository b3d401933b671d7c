"""Carrying out routing plans against pools: strategies, fallbacks, live pool state.

Ray-free: pools are reached through the `PoolClient` protocol, which the ingress backs
with Serve handles and tests back with fake engines.
"""
