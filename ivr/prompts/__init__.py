"""Spoken prompts of the call flow: the text catalogue and the build that speaks it to WAV files."""
