"""Tiny random-weight models and synthetic speech, for the tests and ``anytalker generate --demo``."""
