"""Configuration: the typed model, units, and loading with file:line errors."""
