"""A reusable Django app: failed Celery jobs are recorded, retried automatically, and never silently lost."""
