"""Reproduction of the Modality Focusing Hypothesis synthetic experiments."""
