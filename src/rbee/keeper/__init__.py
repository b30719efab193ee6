"""The keeper: the CLI commands that talk to the queen's HTTP API (it never schedules, never SSHes)."""
