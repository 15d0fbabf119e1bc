"""packager.registry."""
