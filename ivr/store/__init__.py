"""Durable store: calls, call events, agents, routing rules, callback requests (SQLAlchemy 2)."""
