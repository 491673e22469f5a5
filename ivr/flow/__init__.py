"""The call flow: one explicit state machine per call, driven by ARI events."""
