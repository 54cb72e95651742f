"""The serving side: load a store, verify it, dispatch calls to its artifacts."""
