"""Chaos soak runs: thousands of calls and socket drops under injected faults, all accounted."""
