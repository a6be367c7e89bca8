"""The synthetic mini-world: a procedural AU-driven face renderer and its datasets."""
