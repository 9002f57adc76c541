"""realflow: a dataflow-graph execution engine for LLM post-training."""
__version__ = "0.1.0"
