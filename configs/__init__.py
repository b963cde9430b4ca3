"""Embedded YAML configurations (package data)."""
