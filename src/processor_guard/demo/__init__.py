"""The incident replayed twice, unguarded and guarded (``processor-guard demo``)."""
