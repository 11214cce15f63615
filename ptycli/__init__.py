"""ptycli: command-line electron ptychography.

Every stage is also callable from Python: ``ptycli.stages.<stage>``.
"""

__version__ = "0.1.0"
