"""The shared core: settings, database engines, the recsys schema and its migrations, logging."""
