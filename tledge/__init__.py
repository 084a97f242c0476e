"""tledge: transfer-learn an image classifier, quantize it, and run it on the edge."""

__version__ = "0.1.0"
