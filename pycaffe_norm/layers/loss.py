"""Placeholder; filled by its family."""
