"""The lesson engine: syllabus, turn-taking, prompts, guards. Plain async Python; no discord, no torch."""
