"""The playground: an ipywidgets app over a headless state; it renders, model logic lives elsewhere."""
