"""Completion tracking per game date, reconciliation against the data, and health."""
