"""packager.serve."""
