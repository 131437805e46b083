"""Demo domain: synthetic card transactions with known fraud patterns, and trained models.

``generator`` makes reproducible customer profiles and Request-shaped transactions and holds
``augment_features``, the one function that turns a request plus a profile plus the card's
last card-present transaction into external and internal state (used by training and by the
streaming augment job alike). ``train`` trains the demo model packages under ``models/``.
"""
