"""Fault-injection suite: paused holders, killed stores, bad networks, clocks, keepers."""
