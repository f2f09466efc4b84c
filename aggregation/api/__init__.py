"""REST resources of the aggregation app: experiments, rounds, updates, model versions,
predictions, metrics history, and the site-agent protocol (``agent.py``)."""
