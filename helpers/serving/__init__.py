"""Served models: an OpenAI-compatible server (vLLM) as a model, and `serve`'s plan for standing vLLM up."""
