"""Data stage: sources (generator, loaders, CLI), extraction, validation, sampling, bulk writes."""
