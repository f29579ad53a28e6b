"""Harnesses that put a served repository under load and check what comes back (not needed to serve)."""
