"""llmproxy: a fast, operator-friendly gateway for self-hosted LLM inference servers."""

__version__ = "0.1.0"
