"""Original metaseq OPT checkpoints, read without metaseq and converted to Hugging Face folders, by stage."""
