"""Serving engines: which one serves an artifact and what it can do (`packager.engines.select`)."""
