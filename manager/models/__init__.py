"""Models: the Hugging Face hub, downloads, the local library and what a model can do."""
