"""weaving."""
