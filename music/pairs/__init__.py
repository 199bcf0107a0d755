"""Preference pairs other than MUSIC's own: last-turn pairs D, quality twins, the filters and relevance checks."""
