"""rbee: an LLM inference orchestrator for home labs and small GPU clusters.

One package, four modes: the keeper CLI, and the ``queen``, ``hive`` and ``worker`` daemons.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
