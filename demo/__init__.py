"""The demo script (make demo)."""
