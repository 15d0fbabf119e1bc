"""packager.loadtest."""
