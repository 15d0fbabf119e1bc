"""packager.monitor."""
