"""MLX Model Manager domain: no gradio, no mlx imports here."""
