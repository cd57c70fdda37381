"""Training: config, input pipeline, loop, and the stage function the DAG calls."""
