"""The queen: the daemon that decides (registry, jobs, scheduling, relay, hive lifecycle)."""
