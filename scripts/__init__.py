"""The command-line programs of siamese-search (console commands in pyproject.toml)."""
