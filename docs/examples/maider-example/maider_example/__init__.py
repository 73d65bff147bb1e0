"""Example Cloud: a made-up provider showing the maider plugin contract."""
