"""The hive: one daemon per host that runs workers, reports telemetry and keeps the model store."""
