"""Shared machinery: the artifact store and identities, registries, the one training loop,
metrics, statistics, the paper's reported numbers, the worker pool, progress bars, errors."""
