"""Decks: parsers for rate decks, carrier cost decks and code lists, and their scan engine."""
