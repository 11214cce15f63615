"""Physics: pure functions of arrays and numbers (any backend; float32 default)."""
