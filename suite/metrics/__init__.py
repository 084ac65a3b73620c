"""Metrics: small pure functions of tensors, one module per family."""
