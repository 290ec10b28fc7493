"""The plan search: for one learning config, which execution plan (micro-batch x accumulation, precision,
compile, ...) runs it fastest on this device, measured with a few optimizer steps of the real loop.

measure.py measures one plan; cache.py keeps measurements per (plan, device) on disk; search.py filters
the candidates by the VRAM estimate (fits.py), measures them and picks the fastest. No Ray here: the Train
worker calls `search_plans` before it trains.
"""
