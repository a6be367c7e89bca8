"""Dataset adapters, the sample table, folds and format writers."""
