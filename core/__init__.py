"""Vocabulary every layer shares: the domain errors and the strict config base.

Imports nothing from the other packages, so models, routing, execution and deployments
can all depend on it.
"""
