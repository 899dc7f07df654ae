"""Observability: socket events -> connections -> protocol parsers -> Pixie-shaped tables."""
