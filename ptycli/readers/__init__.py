"""Raw formats -> chunks + metadata; one module per format, registered by suffix."""
