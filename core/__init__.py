"""Tessera's domain: keys, versions, the config service and the ports its adapters implement.

Nothing in here (outside ``core/backends``) imports boto3, FastAPI, SQLite or httpx.
"""
