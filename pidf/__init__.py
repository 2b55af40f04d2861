"""pidf."""
