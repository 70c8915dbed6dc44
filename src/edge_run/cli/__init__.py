"""The ``edge-run`` command line: one thin module per command group over library functions."""
