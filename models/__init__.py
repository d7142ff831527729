"""lesionsynth ML core: data, diffusion (train + inpaint), balancing, evaluation.

Nothing in this package imports a web framework; the services in ``services/`` are thin adapters over it.
"""

__version__ = "0.1.0"
