"""gradscope inside the tools you already train with.

- :mod:`gradscope.integrations.hf` — ``GradscopeCallback`` for Hugging Face's ``Trainer``
  (``pip install gradscope[hf]``);
- :mod:`gradscope.integrations.lightning` — ``GradscopeCallback`` for ``lightning.Trainer``
  (``pip install gradscope[lightning]``).

Import the submodule you need. This package imports neither library: ``import gradscope`` and
``import gradscope.integrations`` stay light for users who have neither installed.
"""
