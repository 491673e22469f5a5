"""Call routing: rules that pick the region, skill, priority and overflow for each call."""
