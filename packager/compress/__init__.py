"""Compression stages. Each method is a pair: an `XxxArgs` pydantic model with `kind: Literal["xxx"]`, and
a function registered under the same name with `@METHODS.register("xxx")`. See base.py."""
