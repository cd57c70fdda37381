"""Airflow-facing adapters (hooks on Airflow Connections). Thin: logic stays in tasks/."""
