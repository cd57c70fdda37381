"""The pipeline's logic: plain, typed functions that import nothing from Airflow."""
