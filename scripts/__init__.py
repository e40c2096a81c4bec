"""Repository maintenance commands, run from the repository root with ``python -m scripts.<name>``
(``make`` targets call them). Not part of any image."""
