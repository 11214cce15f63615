"""Orchestration of each pipeline stage; callable from Python (no printing)."""
