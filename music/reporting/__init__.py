"""Presentation: conversations as HTML, the findings in words, the figures."""
