"""Vitrine's Triton model repository: one spec rendered for the embedded CPU server and GPU production."""
