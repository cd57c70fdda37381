"""Model stage: features, the two-tower, training, evaluation, the pyfunc wrapper."""
