"""Serving stage: deploy, the TF-Serving client, vectors, namespace, KV, recall, DPP, precompute."""
