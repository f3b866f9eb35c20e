"""``python -m emomix.cli``: the ``emomix`` command."""

from emomix.cli import main

if __name__ == "__main__":
    main()
