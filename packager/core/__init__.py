"""Small helpers every room uses, each written once: validation errors for people (validation), a quiet console
(logs), the one progress bar (progress), model sources (sources) and explicit name -> implementation tables
(plugins)."""
