"""abaw-ce: compound expression recognition kit."""
__version__ = "0.1.0"
