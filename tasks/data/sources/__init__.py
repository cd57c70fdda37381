"""Business data sources: the synthetic generator, public data set loaders, the replica writer."""
