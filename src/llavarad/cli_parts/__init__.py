"""CLI verbs, one module per area; each exposes ``register(group)``. See :mod:`llavarad.cli`."""
