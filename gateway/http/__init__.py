"""The HTTP/JSON API and the demo page, served by the gateway process next to gRPC.

``models`` holds the wire shapes and their conversions, ``routes`` the routes (module level, calling
``gateway.calls``), ``app`` the FastAPI application (key checks, error shape, body limit, page), and
``server`` uvicorn on the gateway's event loop.
"""
