"""Nightly LoRA training of the student: dataset (`data`), loop (`loop`), job entry point (`python -m trainer`)."""
