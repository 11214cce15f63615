"""Command line: thin commands over ptycli.stages; holds no science."""
