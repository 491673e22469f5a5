"""Helpers that build tiny real voiceprint models for tests (never imported at run time)."""
