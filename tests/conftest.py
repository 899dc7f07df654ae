"""Puts tests/ on sys.path (pytest does that for a rootdir conftest), so every test can
``from corpus import STABLE_RULES``."""
