"""`python -m packager.cli ARGS`: the same as the `packager` console script."""
from packager.cli.app import main

if __name__ == "__main__":  # pragma: no cover
    main()
