"""The webhook inbox: persist first, acknowledge after commit, deduplicate retries; per-endpoint config."""
