"""packager.report."""
