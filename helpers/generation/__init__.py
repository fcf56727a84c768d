"""Generating text: settings, a request, decoding backends, results, generate() and stream()."""
