"""subl: a declarative runner for subliminal-learning experiments."""

__version__ = "0.1.0"
