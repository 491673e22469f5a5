"""voiceprint package."""
