"""Integrations with other continual-learning frameworks, each behind an optional extra.

``impresslearn.integrations.avalanche`` (``pip install impresslearn[avalanche]``): an Avalanche
strategy that runs ImpressLearn in Avalanche's training loop, metrics and checkpointing.
Nothing here is imported by ``import impresslearn``.
"""
