"""Allow ``python -m llmproxy``."""

from llmproxy.cli.main import run

run()
