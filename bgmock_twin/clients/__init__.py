"""Clients for everything the twin talks to: BGMock's REST services and databases."""
