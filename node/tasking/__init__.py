"""Celery application, queues and tasks."""
