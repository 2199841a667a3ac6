"""Runs of several stages: `quickstart` (the whole Alpaca loop on embedded defaults) and `selftrain`
(rounds of pseudo-labelling and retraining), on `stages` (input digests, skip, resume)."""
