"""`make gpu-check`: one prepared measuring run on one GPU; `python -m helpers.analysis.gpu_check`."""
