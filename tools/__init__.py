"""The project's own measuring machinery (GPU check, plan checks, leak cycles): source tree only, not the wheel."""
