"""FedHealth: federated learning of health classifiers across sites.

Deliberately empty: ``fedhealth.ml`` must import without Django or Celery (a site
agent or a notebook uses it alone), so the Celery app is loaded by the aggregation
app's ``ready()`` instead of here.
"""
