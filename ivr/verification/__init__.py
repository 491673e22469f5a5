"""Account-security tiers: one-time codes (tier 1); voiceprints (tier 2) plug in here."""
