"""Placeholder until written."""
__all__ = []
