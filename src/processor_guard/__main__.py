"""``python -m processor_guard``: the ``processor-guard`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="processor-guard")
