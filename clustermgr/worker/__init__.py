"""The worker process: ``python -m clustermgr.worker`` (see ``loop.py``)."""
