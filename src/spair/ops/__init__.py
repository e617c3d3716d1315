"""Numerical building blocks shared by the models: distributions and KLs, the count prior,
glimpse extraction and sprite rendering. Nothing here knows about training or data."""
