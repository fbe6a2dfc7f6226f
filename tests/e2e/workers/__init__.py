"""Tiny worker programs that the runtime's end-to-end tests run as real processes."""
