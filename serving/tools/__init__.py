"""Tool calling: how tools and tool messages are written into a prompt (template.py) and how a model's output is
read back as tool calls, whole or while it streams (parsers.py)."""
