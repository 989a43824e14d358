"""Reference computations used only by the tests."""
