"""Recommendations from shopper behaviour, offline: features, a two-tower model, training, evaluation, export.

Imports only the kernel (and ``demo``); serving is Triton (the user tower), the index (item vectors in a
``rec.<version>`` space) and the gateway (``gateway.recommend``).
"""
