"""Pure tensor functions, one folder per family: ``naive.py`` is the oracle, the other files the fast paths."""
