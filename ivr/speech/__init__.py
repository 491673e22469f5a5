"""Wires the ``asr`` speech path into calls: ExternalMedia legs, transcripts, intents."""
