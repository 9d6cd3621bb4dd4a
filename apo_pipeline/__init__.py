"""apo-pipeline: online and iterative preference optimization on Ray, vLLM and DeepSpeed."""
__version__ = "0.1.0"
