"""Datasets for ClustViT training and evaluation."""
