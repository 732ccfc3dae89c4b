"""Quizzes: grading answers, writing held-out items, the control set. No discord, no torch."""
