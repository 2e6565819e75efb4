"""MoP: Mixture of Personas for population simulation with a frozen language model."""

__version__ = "0.1.0"
