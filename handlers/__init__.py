"""The thin HTTP layer: FastAPI routers over ``core``; the same app runs under uvicorn or Lambda (Mangum)."""
