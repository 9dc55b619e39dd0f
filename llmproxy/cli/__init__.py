"""The ``llmproxy`` command: the daemon and the operator's toolkit."""
