"""pacos: Stanford Alpaca end to end, from a laptop CPU to a GPU cluster."""

__version__ = "0.1.0"
