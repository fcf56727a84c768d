"""The project's own measuring machinery (the GPU check, plan checks, leak cycles): in the source tree, not the wheel."""
