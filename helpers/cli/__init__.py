"""The command line: `python -m helpers generate|convert-metaseq|plan|bench|leaks`."""
