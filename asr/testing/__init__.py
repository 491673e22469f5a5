"""Helpers that build tiny real models for tests (never imported at run time)."""
