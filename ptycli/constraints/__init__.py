"""Constraints (projections between updates) and cost regularisers; a registry."""
