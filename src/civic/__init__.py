"""CIVIC: run your own volunteer-computing cluster."""

__version__ = "0.1.0"
