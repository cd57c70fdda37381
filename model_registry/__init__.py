"""MLflow registry: log, register, alias, gate, rollback."""
