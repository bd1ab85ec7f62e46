"""bactrian: multilingual instruction tuning the Bactrian-X way."""

__version__ = "0.1.0"
