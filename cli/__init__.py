"""The ``gradscope`` command line (installed as the ``gradscope_cli`` package)."""
