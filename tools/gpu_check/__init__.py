"""`make gpu-check`: one prepared measuring run on one GPU; `python -m tools.gpu_check`."""
