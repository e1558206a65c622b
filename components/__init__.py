"""Gradio UI: one module per tab, each exposing build(services)."""
