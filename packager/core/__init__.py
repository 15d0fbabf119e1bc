"""Small helpers every room uses, each written once: validation errors for people, number formats, progress."""
