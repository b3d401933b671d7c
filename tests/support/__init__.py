"""Servers and helpers the tests start themselves."""
