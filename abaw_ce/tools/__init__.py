"""Developer tools: the import-layer check."""
