"""Hives on other hosts: connectors, the lifecycle steps on one host, and the queen's side."""
