"""`openuni serve`: an OpenAI-compatible HTTP API for image generation, editing and chat on one loaded model.

config.py     what a server allows (every bound) and how it batches     protocol.py   OpenAI's bodies and errors
batching.py   the cross-request batcher and its worker thread           service.py    requests -> jobs -> model
chat_messages.py  OpenAI chat messages -> an InternVLChat conversation  app.py        the FastAPI routes
metrics.py    Prometheus metrics                                        ray_app.py    the Ray Serve deployment

Needs the `serve` extra (`pip install -e '.[serve]'`); nothing here is imported by `import openuni`.
"""
