"""Command lines, one module per stage; the stage scripts and the ``abaw-ce`` command call them. The library
never imports this package."""
