"""The site agent: trains where the data lives, and only weights leave the site.

Runs on a hospital's own machine with only the Django-free core (``fedhealth.ml``),
numpy, torch and requests::

    python -m fedhealth.agent --server https://fedhealth.example.org --data local.csv
    # token from FEDHEALTH_AGENT_TOKEN (or --token)

``data`` validates the CSV and builds the summary it registers (statistics, never
rows); ``client`` is the HTTP client with retries; ``loop`` polls for work, trains and
evaluates locally; ``cli`` is the command line (also ``manage.py site_agent``).
"""
