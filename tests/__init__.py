"""The tests of siamese-search; shared helpers are in `tests.support`."""
