"""Writing rows safely: pre-write dedup, the fenced MERGE and the warehouse adapters."""
