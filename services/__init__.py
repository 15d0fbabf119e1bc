"""BentoML service templates of packager (see services/service.py)."""
