"""``python -m gradscope ...`` is the ``gradscope`` command."""
from gradscope_cli.main import main

if __name__ == "__main__":
    main(prog_name="gradscope")
