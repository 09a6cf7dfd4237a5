"""The passes: one module per pass, registered by name in `optimize.registry`."""
